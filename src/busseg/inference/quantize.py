"""INT8 post-training quantization of an exported busseg ONNX model, checked by mask agreement.

:func:`quantize_onnx` turns the fp32 graph written by
:func:`busseg.inference.export.export_onnx` into an INT8 graph run by onnxruntime
(``busseg export --quantize int8``; ``busseg predict --onnx model.int8.onnx`` runs it like any
busseg ONNX file):

1. **Pre-processing** (``onnxruntime.quantization.quant_pre_process``): shape inference and
   onnxruntime's basic graph optimisations (BatchNorm folded into the convolutions), so that
   the quantised operators are the ones onnxruntime will actually run.
2. **Calibration**: the fp32 graph is run on a handful of images preprocessed exactly as
   ``busseg predict`` preprocesses them — scans from a folder (the user's own, the best choice)
   or, with ``"phantoms"``, the synthetic ultrasound phantoms of
   :func:`busseg.data.phantom.make_phantoms` — and the range of every activation is recorded
   (min/max: with a handful of images the percentile and entropy estimators have too few
   samples in the tails to be better).
3. **Static QDQ quantization**: activations unsigned 8-bit with a zero point, weights signed
   8-bit per output channel, symmetric. ``reduce_range`` (7-bit weights) is used because the
   AVX2 / AVX-512 kernels without VNNI multiply u8 x s8 pairs into saturating 16-bit sums; full
   8-bit weights can overflow there (onnxruntime's quantization guide), VNNI CPUs and ARM do
   not need it but lose little with it.
4. **Check**: an INT8 network does not reproduce fp32 logits to 1e-4 — its logits differ by
   design — so the criterion is what prediction delivers: the binary masks (probability > 0.5)
   of the INT8 graph are compared with the masks of the reference (the PyTorch model when
   exporting) on phantom images that were *not* used for calibration. The per-image Dice
   (two empty masks agree: Dice 1) must have a mean of at least ``min_dice`` (default 0.98),
   otherwise nothing is written and :class:`~busseg.errors.ExportError` is raised.
   The largest probability difference and, for multi-task models, the agreement of the
   predicted class are reported too. All figures go into the file's metadata
   (``busseg.quantization``).

Untrained models (``busseg export <model name>``) have no meaningful masks; their agreement is
reported but says nothing about a trained model's.
"""

from __future__ import annotations

import json
import logging
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Sequence

import numpy as np

from busseg.errors import ConfigError, DataError
from busseg.inference.onnx_runner import CLS_OUTPUT, META_CHECK, META_QUANTIZATION, SEG_OUTPUT

log = logging.getLogger(__name__)

QUANTIZATIONS = ("int8",)
PHANTOMS = "phantoms"
#: seeds of the phantoms: calibration and check images are different phantoms.
CALIBRATION_SEED = 11
CHECK_SEED = 12


@dataclass
class QuantizationResult:
    path: Path
    model: str
    calibration: str
    n_calibration: int
    n_checked: int
    mean_dice: float
    min_dice: float
    required_dice: float
    max_prob_diff: float
    class_agreement: float | None = None
    fold: int | None = None
    notes: list[str] = field(default_factory=list)

    def as_dict(self) -> dict:
        return {
            "type": "int8", "format": "QDQ", "activations": "uint8 asymmetric, per tensor",
            "weights": "int8 symmetric, per channel, reduce_range", "calibration": self.calibration,
            "n_calibration_images": self.n_calibration, "n_check_images": self.n_checked,
            "mask_dice_mean": self.mean_dice, "mask_dice_min": self.min_dice,
            "mask_dice_required": self.required_dice, "max_probability_diff": self.max_prob_diff,
            "class_agreement": self.class_agreement,
        }

    def describe(self) -> str:
        fold = f" (fold {self.fold})" if self.fold is not None else ""
        cls = f"; predicted class agrees on {self.class_agreement:.0%}" if self.class_agreement is not None else ""
        return (f"{self.path}: {self.model}{fold} quantized to INT8 (calibrated on {self.n_calibration} images: "
                f"{self.calibration}). Mask agreement with PyTorch fp32 on {self.n_checked} phantom "
                f"images not used for calibration: mean Dice {self.mean_dice:.4f} (lowest {self.min_dice:.4f}; "
                f"required >= {self.required_dice:g}); largest probability difference "
                f"{self.max_prob_diff:.3f}{cls}. INT8 logits differ from fp32 by design: the masks are the check.")


def quantized_path(fp32_path: str | Path, out_is_file: bool) -> Path:
    """Where the INT8 twin of ``fp32_path`` goes: ``model.int8.onnx`` next to a single output
    file, or ``<folder>/int8/<name>.onnx`` for files exported into a folder (so that
    ``busseg predict --onnx <folder>`` never ensembles fp32 and INT8 copies of one model, and
    ``--onnx <folder>/int8`` runs the INT8 ensemble)."""
    path = Path(fp32_path)
    return path.with_name(f"{path.stem}.int8.onnx") if out_is_file else path.parent / "int8" / path.name


def _model_inputs(images_u8: Sequence[np.ndarray], recipe: dict) -> np.ndarray:
    """uint8 images at any size -> the network's input ``[N,C,S,S]`` float32, as ``predict``."""
    from busseg.data.preprocess import normalize, resize_image

    size, channels = int(recipe["image_size"]), int(recipe["in_channels"])
    batch = [np.asarray(normalize(resize_image(image, size), recipe["normalization"]), np.float32)
             for image in images_u8]
    return np.ascontiguousarray(np.repeat(np.stack(batch)[:, None], channels, axis=1))


def phantom_inputs(recipe: dict, count: int, seed: int) -> np.ndarray:
    """``count`` synthetic ultrasound phantoms preprocessed as the recipe does."""
    from busseg.data.phantom import make_phantoms

    phantoms = make_phantoms(int(count), image_size=int(recipe["image_size"]), seed=seed)
    return _model_inputs(list(phantoms.images), recipe)


def calibration_inputs(source: str | Path, recipe: dict, count: int = 16) -> tuple[np.ndarray, str]:
    """The calibration batch and a description of it: ``"phantoms"`` or images found in a
    file, folder or list file (as ``busseg predict`` finds them; evenly spaced through the
    sorted list when there are more than ``count``; unreadable files are skipped)."""
    if int(count) < 1:
        raise ConfigError(f"calibration needs at least one image, got count={count}")
    if str(source) == PHANTOMS:
        return phantom_inputs(recipe, count, CALIBRATION_SEED), PHANTOMS
    from busseg.data.imageio import read_image
    from busseg.inference.predict import collect_inputs

    items, _ = collect_inputs(source)
    picks = [items[int(i)] for i in np.unique(np.linspace(0, len(items) - 1, min(count, len(items))).round())] if items else []
    images = []
    for item in picks:
        try:
            images.append(read_image(item.path))
        except DataError as exc:
            log.warning("calibration: skipped %s (%s)", item.path, exc)
    if not images:
        raise DataError(f"calibration source {source}: no readable image found")
    return _model_inputs(images, recipe), f"{source}"


def _dice(a: np.ndarray, b: np.ndarray) -> float:
    total = int(a.sum()) + int(b.sum())
    return 1.0 if total == 0 else 2.0 * int(np.logical_and(a, b).sum()) / total


def mask_agreement(reference: dict[str, np.ndarray], candidate: dict[str, np.ndarray]) -> dict:
    """Per-image Dice of the masks (sigmoid > 0.5 <=> logit > 0), the largest probability
    difference, and the fraction of images with the same predicted class (multi-task)."""
    out: dict = {"dice": [], "max_prob_diff": 0.0, "class_agreement": None}
    if SEG_OUTPUT in reference:
        ref, got = reference[SEG_OUTPUT], candidate[SEG_OUTPUT]
        out["dice"] = [_dice(r > 0, g > 0) for r, g in zip(ref, got)]
        sigmoid = lambda v: 1.0 / (1.0 + np.exp(-v.astype(np.float64)))  # noqa: E731
        out["max_prob_diff"] = float(np.abs(sigmoid(ref) - sigmoid(got)).max())
    if CLS_OUTPUT in reference:
        same = reference[CLS_OUTPUT].argmax(1) == candidate[CLS_OUTPUT].argmax(1)
        out["class_agreement"] = float(same.mean())
    return out


def quantize_onnx(
    fp32_path: str | Path,
    out_path: str | Path,
    recipe: dict,
    reference: Callable[[np.ndarray], dict[str, np.ndarray]],
    *,
    calibration: str | Path = PHANTOMS,
    calibration_count: int = 16,
    check_count: int = 8,
    min_dice: float = 0.98,
) -> QuantizationResult:
    """Quantize the busseg ONNX file ``fp32_path`` to INT8 at ``out_path`` (module docstring).

    Args:
        reference: ``images [N,C,S,S] -> {output name: logits}`` of the model being quantized
            (the PyTorch model when exporting), the masks the INT8 graph must reproduce.
        calibration: ``"phantoms"`` or a file / folder / list file of scans.
        min_dice: the mean mask Dice below which the INT8 graph is refused (0 reports only).
    """
    import onnx
    import onnxruntime as ort
    from onnxruntime.quantization import CalibrationDataReader, QuantFormat, QuantType, quantize_static
    from onnxruntime.quantization.shape_inference import quant_pre_process

    from busseg.errors import ExportError
    from busseg.inference.onnx_runner import save_onnx

    if not 0.0 <= float(min_dice) <= 1.0:
        raise ConfigError(f"min_dice must lie in [0, 1], got {min_dice}")
    fp32_path, out_path = Path(fp32_path), Path(out_path)
    fp32 = onnx.load(str(fp32_path))
    meta = {p.key: p.value for p in fp32.metadata_props}
    outputs = [o.name for o in fp32.graph.output]
    input_name = fp32.graph.input[0].name
    calib, calib_name = calibration_inputs(calibration, recipe, calibration_count)

    class _Reader(CalibrationDataReader):
        def __init__(self) -> None:
            self._batches = iter([{input_name: calib[i : i + 1]} for i in range(len(calib))])

        def get_next(self):
            return next(self._batches, None)

    with tempfile.TemporaryDirectory(prefix=".busseg-quantize-") as tmp:
        prepared, quantized = Path(tmp) / "prepared.onnx", Path(tmp) / "int8.onnx"
        quant_pre_process(str(fp32_path), str(prepared), skip_symbolic_shape=False)
        quantize_static(
            str(prepared), str(quantized), _Reader(), quant_format=QuantFormat.QDQ,
            activation_type=QuantType.QUInt8, weight_type=QuantType.QInt8, per_channel=True,
            reduce_range=True,
        )
        proto = onnx.load(str(quantized))

    session = ort.InferenceSession(proto.SerializeToString(), providers=["CPUExecutionProvider"])
    check = phantom_inputs(recipe, check_count, CHECK_SEED)
    got = dict(zip(outputs, session.run(outputs, {input_name: check})))
    agreement = mask_agreement(reference(check), got)
    dice = agreement["dice"] or [1.0]
    result = QuantizationResult(
        path=out_path, model=recipe["model"], calibration=calib_name, n_calibration=len(calib),
        n_checked=len(check), mean_dice=float(np.mean(dice)), min_dice=float(np.min(dice)),
        required_dice=float(min_dice), max_prob_diff=agreement["max_prob_diff"],
        class_agreement=agreement["class_agreement"],
    )
    if result.mean_dice < float(min_dice):
        raise ExportError(
            f"model {recipe['model']!r}: the INT8 masks agree with PyTorch's with mean Dice "
            f"{result.mean_dice:.4f} (lowest {result.min_dice:.4f}) on {result.n_checked} phantom images, "
            f"below the required {min_dice:g}; {out_path} not written (calibrate on your own scans with "
            "--calibration FOLDER, or keep the fp32 model)"
        )
    meta[META_QUANTIZATION] = json.dumps(result.as_dict())
    meta[META_CHECK] = json.dumps({"max_probability_diff": result.max_prob_diff})
    save_onnx(proto, out_path, meta, f"{fp32.producer_name} + onnxruntime INT8 quantization")
    return result


__all__ = ["PHANTOMS", "QUANTIZATIONS", "QuantizationResult", "calibration_inputs", "mask_agreement",
           "phantom_inputs", "quantize_onnx", "quantized_path"]
