"""The model behind the web demo: what it serves, and the one place it loads one.

:func:`load_model` loads any source the predictor API takes — a ``train`` run folder, a ``cv``
folder (its fold models averaged), a checkpoint, a busseg ONNX file or a folder of them —
through :func:`busseg.load`, the one predictor behind every way of applying a model:
``model(image, spacing=...)`` returns the mask, the probability map, the class probabilities
(multi-task models) and the measurements at the image's own size, exactly as ``busseg
predict`` and ``busseg evaluate`` compute them.

:func:`demo_model` is the model served when none is given: the run ``make demo`` (``busseg
demo``) trains into ``busseg_output/demo/unet_fold0``. When it is missing the demo is run first
(:func:`busseg.demo.run_demo`, about a minute on two CPU cores), so ``busseg serve`` works on a
fresh machine without network or data. :func:`example_images` are held-out phantoms to click on.
"""

from __future__ import annotations

import logging
from pathlib import Path

log = logging.getLogger("busseg")

#: where ``busseg demo`` writes by default, and the run inside it that is served.
DEMO_OUTPUT = Path("busseg_output/demo")
DEMO_RUN = "unet_fold0"


def load_model(source: str | Path, *, tta: bool = False):
    """The predictor for ``source``: :func:`busseg.load` (see the module docstring); its
    result carries ``mask``, ``probability``, ``class_probabilities`` and ``measurements``."""
    import busseg

    return busseg.load(source, tta=tta)


def demo_model(output: str | Path = DEMO_OUTPUT, *, train_if_missing: bool = True, progress: bool = False,
               **demo_options) -> Path:
    """The run folder of the demo model (``<output>/unet_fold0``), trained first with
    :func:`busseg.demo.run_demo` when it is not there (and ``train_if_missing``);
    ``demo_options`` go to ``run_demo`` (tests train a smaller one)."""
    from busseg.errors import ConfigError

    run = Path(output) / DEMO_RUN
    if (run / "result.json").is_file():
        return run
    if not train_if_missing:
        raise ConfigError(f"no demo model in {run}; run `busseg demo --out {output}` (or `make demo`) first")
    from busseg.demo import run_demo

    log.info("serve: no model given and no demo model in %s yet; training it now (about a minute on two "
             "CPU cores, once)", run)
    run_demo(output, progress=progress, **demo_options)
    return run


def example_images(n: int = 4, seed: int = 7, image_size: int = 192) -> list[Path]:
    """``n`` phantom scans the demo model never saw (another seed than its training data), as
    PNG files in busseg's cache."""
    from busseg.data import load_records

    return [record.image_path for record in load_records("phantom", n=n, image_size=image_size, seed=seed)]


__all__ = ["DEMO_OUTPUT", "demo_model", "example_images", "load_model"]
