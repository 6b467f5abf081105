"""The model behind the web demo: what it serves, and the one place it loads one.

:func:`load_model` loads any source the predictor API takes — a ``train`` run folder, a ``cv``
folder (its fold models averaged), a checkpoint, a busseg ONNX file or a folder of them — into
an object with the predictor interface the page needs: ``model(image, spacing=...)`` returns
the mask, the probability map, the class probabilities (multi-task models) and the
measurements at the image's own size; ``describe()``, ``segments``, ``classifies`` and
``with_options(tta=...)``.

:func:`demo_model` is the model served when none is given: the run ``make demo`` (``busseg
demo``) trains into ``busseg_output/demo/unet_fold0``. When it is missing the demo is run first
(:func:`busseg.demo.run_demo`, about a minute on two CPU cores), so ``busseg serve`` works on a
fresh machine without network or data. :func:`example_images` are held-out phantoms to click on.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

log = logging.getLogger("busseg")

#: where ``busseg demo`` writes by default, and the run inside it that is served.
DEMO_OUTPUT = Path("busseg_output/demo")
DEMO_RUN = "unet_fold0"


@dataclass(frozen=True)
class Prediction:
    """One image's result at its own size (the fields of the predictor API's result)."""

    mask: np.ndarray | None
    probability: np.ndarray | None
    class_probabilities: dict[str, float] | None
    measurements: dict[str, Any] | None


class _PredictorAdapter:
    """The predictor interface over :func:`busseg.inference.predict.load_predictor` (the only
    code here that knows how today's inference module is laid out)."""

    def __init__(self, predictor, tta: bool = False) -> None:
        self.predictor = predictor
        self.tta = bool(tta)
        self.segments, self.classifies = (bool(v) for v in predictor.outputs)

    def describe(self) -> str:
        return self.predictor.describe() + (", flip TTA" if self.tta else "")

    def with_options(self, *, tta: bool | None = None) -> "_PredictorAdapter":
        return _PredictorAdapter(self.predictor, self.tta if tta is None else tta)

    def __call__(self, image, *, spacing: tuple[float, float] | None = None) -> Prediction:
        import torch

        from busseg.data.imageio import read_image, read_pixel_spacing
        from busseg.data.preprocess import normalize, resize_image
        from busseg.engine.evaluate import predict_probabilities
        from busseg.inference.measurements import lesion_measurements
        from busseg.inference.predict import resize_probability, resolve_postprocess
        from busseg.postprocess import postprocess_mask

        recipe = self.predictor.recipe
        gray = read_image(image)
        own = read_pixel_spacing(image)
        spacing = own if own is not None else spacing
        small = resize_image(gray, int(recipe["image_size"]))
        x = torch.from_numpy(np.asarray(normalize(small, recipe["normalization"]), np.float32))
        x = x[None].repeat(int(recipe["in_channels"]), 1, 1)[None]
        with torch.no_grad():
            seg, cls = predict_probabilities(self.predictor.models, x, batch_size=1, device=self.predictor.device,
                                             tta=self.tta)
        mask = probability = measurements = classes = None
        if seg is not None:
            probability = resize_probability(seg[0], gray.shape)
            mask = postprocess_mask(probability, resolve_postprocess(None, recipe))
            measurements = lesion_measurements(mask, spacing)
        if cls is not None:
            classes = {"benign": 1.0 - float(cls[0]), "malignant": float(cls[0])}
        return Prediction(mask, probability, classes, measurements)


def _is_onnx(source: Path) -> bool:
    return source.suffix.lower() == ".onnx" or (source.is_dir() and any(source.glob("*.onnx"))
                                                 and not (source / "result.json").is_file())


def load_model(source: str | Path, *, tta: bool = False):
    """The predictor for ``source`` (see the module docstring)."""
    from busseg.inference.predict import load_predictor

    source = Path(source)
    return _PredictorAdapter(load_predictor(source, onnx=_is_onnx(source)), tta=tta)


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


__all__ = ["DEMO_OUTPUT", "Prediction", "demo_model", "example_images", "load_model"]
