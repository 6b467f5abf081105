"""Models: the registry, encoders, shared layers, the papers' models and the baselines.

One module per model family; importing this package registers all of them.
"""

from busseg.models.output import ModelOutput
from busseg.models.registry import (
    ModelInfo,
    count_parameters,
    create_model,
    list_models,
    model_info,
    register_model,
)

# Model families register themselves on import. Each helper adds its module here.
from busseg.models import baselines  # noqa: F401,E402  (sub-package: one file per baseline family)
from busseg.models import elad_net  # noqa: F401,E402
from busseg.models import hybrid_attention_net  # noqa: F401,E402
from busseg.models import acsnet  # noqa: F401,E402
from busseg.models import dc_net  # noqa: F401,E402
from busseg.models import attention_unet  # noqa: F401,E402  (Oktay baseline + improved deeper variant)

__all__ = [
    "ModelInfo",
    "ModelOutput",
    "count_parameters",
    "create_model",
    "list_models",
    "model_info",
    "register_model",
]
