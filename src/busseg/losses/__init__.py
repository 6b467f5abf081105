"""Losses: pixel losses (small documented classes) and the papers' composite objectives.

- ``pixel``      Dice, BCE, BCE+Dice, Jaccard, BCE+Jaccard, focal
- ``structure``  weighted BCE + weighted IoU ("structure" loss)
- ``harmonic``   DC-Net's harmonic loss (Eq. 26), usable by any model
- ``objectives`` the generic segmentation objective (pixel loss + deep supervision)
- ``multitask``  any segmentation objective + a weighted classification term
- ``elad_net``, ``acsnet``, ``dc_net``  the papers' composite objectives

Objectives are created by name through :func:`create_objective`.
"""

from busseg.losses.registry import (
    create_objective,
    create_pixel_loss,
    list_objectives,
    list_pixel_losses,
    register_objective,
    register_pixel_loss,
)

from busseg.losses import pixel  # noqa: F401,E402
from busseg.losses import structure  # noqa: F401,E402
from busseg.losses import harmonic  # noqa: F401,E402
from busseg.losses import objectives  # noqa: F401,E402
from busseg.losses import elad_net  # noqa: F401,E402
from busseg.losses import acsnet  # noqa: F401,E402
from busseg.losses import dc_net  # noqa: F401,E402
from busseg.losses import multitask  # noqa: F401,E402

__all__ = [
    "create_objective",
    "create_pixel_loss",
    "list_objectives",
    "list_pixel_losses",
    "register_objective",
    "register_pixel_loss",
]
