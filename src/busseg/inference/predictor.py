"""One predictor behind every way of applying a trained busseg model.

    import busseg
    model = busseg.load("runs/elad")      # a run, a cv folder (fold ensemble), a checkpoint, an ONNX file
    result = model("scan.png")            # a path, a NumPy array or a PIL image
    result.mask, result.probability, result.class_probabilities, result.measurements

``busseg predict`` (a folder of scans), ``busseg evaluate`` and the training's test-fold scores
all apply models through :class:`Predictor`, so a mask means the same thing everywhere.

Sources (:func:`load`): a ``train`` run folder (its ``result.json`` names the selected
checkpoint, relative to the run), a ``cv`` folder (every ``fold_<k>`` run: an ensemble; ``fold``
keeps one), a checkpoint file, a busseg ONNX file (run by onnxruntime), a folder of ONNX files
(an ensemble), or a list of any of these of one kind. Checkpoints are read without running code
(:func:`busseg.models.checkpoint.read_checkpoint`).

What one prediction is (the definition every caller shares):

1. the image becomes ``uint8 [H, W]`` grayscale by the rules files follow
   (:mod:`busseg.data.imageio`; DICOM files bring their pixel spacing);
2. training's preprocessing, from the recipe stored with the model: Pillow bilinear resize to
   ``image_size``², :func:`busseg.data.preprocess.normalize`, the channel repeated
   ``in_channels`` times (3-channel encoders get the grey image three times);
3. the foreground probability is the mean of the sigmoid of every model's logits and, with
   ``tta``, of the horizontal and the vertical flip (each flipped back); the malignancy
   probability of multi-task models is the mean of the softmax in the same way;
4. the probability map is resized to ``[H, W]`` (bilinear: nnU-Net resamples probabilities
   rather than hard masks, so the boundary keeps its sub-pixel position), then thresholded and
   post-processed there (:func:`resolve_postprocess`: sizes given in network pixels are scaled
   to the image);
5. the mask is measured (:func:`busseg.inference.measurements.lesion_measurements`), in mm when
   a pixel spacing is known.
"""

from __future__ import annotations

import hashlib
import json
import logging
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any, Sequence

import numpy as np
import torch
from PIL import Image

from busseg.data.imageio import read_image, read_pixel_spacing, to_gray_uint8
from busseg.data.preprocess import normalize, resize_image
from busseg.errors import CheckpointError, ConfigError
from busseg.inference.measurements import check_spacing, lesion_measurements
from busseg.fileio import file_sha256
from busseg.postprocess import PostprocessConfig, postprocess_mask

log = logging.getLogger(__name__)

#: names of the two classes of multi-task models, in the order of their logits.
CLASS_NAMES = ("benign", "malignant")
ONNX_SUFFIX = ".onnx"


# ----------------------------------------------------------------------------------- result


@dataclass(frozen=True)
class Prediction:
    """What a predictor returns for one image, at the image's own size ``[H, W]``.

    Attributes:
        mask: boolean lesion mask (thresholded and post-processed); ``None`` for models that
            only classify.
        probability: float32 foreground probability in [0, 1]; ``None`` for classifiers.
        class_probabilities: ``{"benign": p, "malignant": 1 - p}`` for multi-task models,
            else ``None``.
        measurements: :func:`~busseg.inference.measurements.lesion_measurements` of ``mask``
            (area, bounding box, diameter, orientation, circularity; mm with a spacing).
    """

    mask: np.ndarray | None
    probability: np.ndarray | None
    class_probabilities: dict[str, float] | None
    measurements: dict[str, Any] | None

    @property
    def predicted_class(self) -> str | None:
        """``"malignant"`` when its probability exceeds 0.5, ``"benign"`` otherwise (multi-task
        models), else ``None``."""
        if self.class_probabilities is None:
            return None
        return "malignant" if self.class_probabilities["malignant"] > 0.5 else "benign"


# --------------------------------------------------------------------------------- helpers


def resize_probability(prob: np.ndarray, shape: tuple[int, int]) -> np.ndarray:
    """A probability map ``[S, S]`` resized bilinearly to ``shape`` (rows, cols), in [0, 1]."""
    prob = np.asarray(prob, np.float32)
    if prob.shape == tuple(shape):
        return prob
    resized = Image.fromarray(prob, mode="F").resize((shape[1], shape[0]), Image.BILINEAR)
    return np.clip(np.asarray(resized, np.float32), 0.0, 1.0)


def resolve_postprocess(postprocess, recipe: dict) -> PostprocessConfig:
    """``None`` (threshold 0.5 only), ``"paper"``, ``"recipe"`` (the recipe's own setting), a
    mapping or a :class:`PostprocessConfig`. Sizes without a ``reference_size`` are taken as
    network pixels (``image_size``²) and scaled to each mask's size, so one setting removes the
    same fraction of every image whatever geometry it is applied in."""
    if postprocess == "recipe":
        postprocess = recipe.get("postprocess")
    elif postprocess == "paper":
        postprocess = {"preset": "paper"}
    config = PostprocessConfig.from_dict(postprocess)
    if config.reference_size is None and not config.is_identity:
        config = replace(config, reference_size=int(recipe["image_size"]))
    return config


def run_checkpoint(run_dir: str | Path) -> tuple[int | None, Path]:
    """``(fold, checkpoint)`` of a finished ``train`` run folder (its ``result.json``).

    The checkpoint is named relative to the run, so a moved or copied run uses its own weights.
    A ``result.json`` written by an older busseg may hold an absolute path; when the path it
    names lies outside the folder (the run was moved or copied), the run's own file of that
    name under ``checkpoints/`` is used, never another run's."""
    run_dir = Path(run_dir)
    result_file = run_dir / "result.json"
    try:
        result = json.loads(result_file.read_text())
        stored = Path(result["best_checkpoint"])
    except (OSError, ValueError, KeyError, TypeError) as exc:
        raise CheckpointError(f"{result_file}: not a finished busseg run record ({exc})") from None
    path = run_dir / stored  # an absolute path stays as it is
    if not path.resolve().is_relative_to(run_dir.resolve()):
        own = run_dir / "checkpoints" / stored.name
        if not own.is_file():
            raise CheckpointError(
                f"{result_file} names the checkpoint {stored}, outside this run folder, and the run has no "
                f"{own.relative_to(run_dir)} of its own; refusing to load another run's weights")
        log.warning("%s names %s outside the run (moved or copied run); using the run's own %s",
                    result_file, stored, own)
        path = own
    if not path.is_file():
        raise CheckpointError(f"{result_file} names the checkpoint {stored}, but {path} does not exist")
    fold = result.get("fold")
    return (int(fold) if fold is not None else None), path


def find_models(source: str | Path) -> list[tuple[int | None, Path]]:
    """``(fold, model file)`` for every model ``source`` names: a checkpoint or ONNX file, a
    ``train`` run folder, a ``cv`` folder of ``fold_<k>`` runs, or a folder of ONNX files."""
    source = Path(source)
    if source.is_file():
        return [(None, source)]
    if not source.is_dir():
        raise CheckpointError(f"model {source} does not exist")
    if (source / "result.json").is_file():
        return [run_checkpoint(source)]
    folds = sorted((d for d in source.glob("fold_*") if d.name[5:].isdigit() and (d / "result.json").is_file()),
                   key=lambda d: int(d.name[5:]))
    if folds:
        return [run_checkpoint(d) for d in folds]
    onnx_files = sorted(source.glob(f"*{ONNX_SUFFIX}"))
    if onnx_files:
        return [(int(p.stem[5:]) if p.stem.startswith("fold_") and p.stem[5:].isdigit() else None, p)
                for p in onnx_files]
    raise CheckpointError(f"{source}: no finished run (result.json), fold_<k> runs or .onnx files in this folder")


# ------------------------------------------------------------------------------- predictor


class Predictor:
    """A model, or an ensemble of models sharing one preprocessing, ready to predict.

    Build it with :func:`load`. Calling it on an image (a path, a NumPy array or a PIL image)
    returns a :class:`Prediction` at the image's size; on a list of images, a list (predicted
    in batches of ``batch_size``). The steps are in the module docstring; the lower-level
    methods (:meth:`read`, :meth:`preprocess`, :meth:`probabilities`, :meth:`finish`) are the
    same steps for callers that batch or score themselves (``busseg predict``, ``evaluate``).

    Attributes:
        models: the PyTorch modules (eval mode) or :class:`~busseg.inference.onnx_runner.OnnxModel` s.
        recipe: the training recipe of the first model (preprocessing: ``image_size``,
            ``normalization``, ``in_channels``).
        sources: the model files, in order.
        backend: ``"pytorch"`` or ``"onnx"``.
        segments, classifies: what the models output.
        tta: average over the horizontal and vertical flips too.
        postprocess: the :class:`~busseg.postprocess.PostprocessConfig` applied to masks.
    """

    def __init__(
        self,
        models: Sequence,
        recipe: dict,
        sources: Sequence[Path],
        *,
        backend: str,
        device: str = "cpu",
        segments: bool = True,
        classifies: bool = False,
        tta: bool = False,
        postprocess=None,
        batch_size: int = 8,
    ) -> None:
        if int(batch_size) < 1:
            raise ConfigError(f"batch_size must be >= 1, got {batch_size}")
        self.models = list(models)
        self.recipe = recipe
        self.sources = [Path(s) for s in sources]
        self.backend = backend
        self.device = str(device)
        self.segments, self.classifies = bool(segments), bool(classifies)
        self.tta = bool(tta)
        self.postprocess = resolve_postprocess(postprocess, recipe)
        self.batch_size = int(batch_size)
        self._identity: str | None = None

    # ---------------------------------------------------------------- description

    @property
    def image_size(self) -> int:
        return int(self.recipe["image_size"])

    def describe(self) -> str:
        """One line: what runs, on which backend and device, at which size."""
        n = len(self.models)
        what = f"{n} {self.recipe['model']} models (ensemble)" if n > 1 else self.recipe["model"]
        precisions = sorted({getattr(m, "precision", "fp32") for m in self.models})
        backend = self.backend if precisions == ["fp32"] else f"{self.backend} {'+'.join(precisions)}"
        tta = ", flip TTA" if self.tta else ""
        return f"{what}, {backend} on {self.device}, {self.image_size}x{self.image_size}{tta}"

    def identity(self) -> str:
        """SHA-256 over the model files' contents (and backend): changes when any model file is
        replaced or retrained in place, whatever its name, size or date."""
        if self._identity is None:
            digest = hashlib.sha256(self.backend.encode())
            for source in self.sources:
                digest.update(file_sha256(source).encode())
            self._identity = digest.hexdigest()
        return self._identity

    def with_options(self, *, tta: bool | None = None, postprocess=..., batch_size: int | None = None) -> "Predictor":
        """A predictor sharing these models with other ``tta`` / ``postprocess`` / ``batch_size``
        settings (those not given are kept)."""
        other = Predictor(self.models, self.recipe, self.sources, backend=self.backend, device=self.device,
                          segments=self.segments, classifies=self.classifies,
                          tta=self.tta if tta is None else tta,
                          postprocess=self.postprocess if postprocess is ... else postprocess,
                          batch_size=self.batch_size if batch_size is None else batch_size)
        other._identity = self._identity
        return other

    # --------------------------------------------------------------------- steps

    @staticmethod
    def read(image, name: str = "image") -> tuple[np.ndarray, tuple[float, float] | None]:
        """``(uint8 [H, W] grayscale, pixel spacing or None)`` of a path (any format busseg
        reads; DICOM brings its spacing), a NumPy array or a PIL image."""
        if isinstance(image, (str, Path)):
            return read_image(image), read_pixel_spacing(image)
        return to_gray_uint8(image, name), None

    def preprocess(self, image: np.ndarray) -> torch.Tensor:
        """``uint8 [H, W]`` -> the network input ``[C, S, S]`` (step 2 of the module docstring)."""
        small = resize_image(image, self.image_size)
        x = torch.from_numpy(np.asarray(normalize(small, self.recipe["normalization"]), np.float32))
        return x[None].repeat(int(self.recipe["in_channels"]), 1, 1)

    @torch.no_grad()
    def probabilities(self, images: torch.Tensor) -> tuple[np.ndarray | None, np.ndarray | None]:
        """Foreground probability ``[N, S, S]`` and malignancy probability ``[N]`` of a batch of
        network inputs ``[N, C, S, S]``, at the network's size (step 3). Either is ``None`` when
        the models do not output it."""
        device = torch.device(self.device)
        amp = device.type == "cuda" and self.backend == "pytorch"
        flips = [None, (3,), (2,)] if self.tta else [None]
        seg_chunks, cls_chunks = [], []
        for start in range(0, images.shape[0], self.batch_size):
            x = images[start : start + self.batch_size].to(device, non_blocking=True)
            seg_sum, cls_sum, count = None, None, 0
            for model in self.models:
                for dims in flips:
                    with torch.autocast(device.type, enabled=amp):
                        out = model(torch.flip(x, dims) if dims else x)
                    if out.seg is not None:
                        p = torch.sigmoid(out.seg.float())
                        p = torch.flip(p, dims) if dims else p
                        seg_sum = p if seg_sum is None else seg_sum + p
                    if out.cls is not None:
                        c = torch.softmax(out.cls.float(), 1)[:, 1]
                        cls_sum = c if cls_sum is None else cls_sum + c
                    count += 1
            if seg_sum is not None:
                seg_chunks.append((seg_sum / count)[:, 0].cpu().numpy())
            if cls_sum is not None:
                cls_chunks.append((cls_sum / count).cpu().numpy())
        seg = np.concatenate(seg_chunks) if seg_chunks else None
        cls = np.concatenate(cls_chunks) if cls_chunks else None
        return seg, cls

    def finish(
        self,
        probability: np.ndarray | None,
        shape: tuple[int, int],
        p_malignant: float | None = None,
        spacing: tuple[float, float] | None = None,
        measure: bool = True,
    ) -> Prediction:
        """The :class:`Prediction` of one image of ``shape`` from its network-size probability
        and malignancy probability (steps 4-5; step 5 only with ``measure``)."""
        mask = full = measurements = None
        if probability is not None:
            full = resize_probability(probability, shape)
            mask = postprocess_mask(full, self.postprocess)
            measurements = lesion_measurements(mask, spacing) if measure else None
        classes = None
        if p_malignant is not None:
            classes = {CLASS_NAMES[0]: 1.0 - float(p_malignant), CLASS_NAMES[1]: float(p_malignant)}
        return Prediction(mask=mask, probability=full, class_probabilities=classes, measurements=measurements)

    # ---------------------------------------------------------------------- call

    def __call__(self, image, *, spacing: tuple[float, float] | None = None, measure: bool = True):
        """Predict one image (a path, a NumPy array or a PIL image), or a list of them.

        ``spacing``: ``(row_mm, col_mm)`` for images that record none (a DICOM file's own
        spacing wins); measurements are then also given in mm. ``measure=False`` skips the
        measurements (``Prediction.measurements`` is then ``None``): callers that only score
        the mask, such as the robustness benchmark, spare that work."""
        if isinstance(image, (list, tuple)):
            return self._predict_many(list(image), spacing, measure)
        return self._predict_many([image], spacing, measure)[0]

    def _predict_many(self, images: list, spacing, measure: bool = True) -> list[Prediction]:
        default = check_spacing(spacing)
        results: list[Prediction] = []
        for start in range(0, len(images), self.batch_size):
            decoded = []
            for k, item in enumerate(images[start : start + self.batch_size]):
                gray, own = self.read(item, str(item) if isinstance(item, (str, Path)) else f"image {start + k}")
                decoded.append((gray, own if own is not None else default))
            batch = torch.stack([self.preprocess(gray) for gray, _ in decoded])
            seg, cls = self.probabilities(batch)
            for i, (gray, image_spacing) in enumerate(decoded):
                results.append(self.finish(None if seg is None else seg[i], gray.shape,
                                           None if cls is None else float(cls[i]), image_spacing, measure))
        return results

    def __repr__(self) -> str:
        return f"Predictor({self.describe()}; postprocess: {self.postprocess.describe()})"


# ------------------------------------------------------------------------------------ load


def _load_one(path: Path, device: str, onnx_threads: int | None) -> tuple[Any, dict, str, tuple[bool, bool]]:
    if path.suffix.lower() == ONNX_SUFFIX:
        from busseg.inference.onnx_runner import CLS_OUTPUT, SEG_OUTPUT, load_onnx_model

        model, recipe = load_onnx_model(path, device=device, threads=onnx_threads)
        return model, recipe, "onnx", (SEG_OUTPUT in model.outputs, CLS_OUTPUT in model.outputs)
    from busseg.models import model_info
    from busseg.models.checkpoint import load_checkpoint

    model, recipe = load_checkpoint(path, device=device)
    # channels-last is the layout oneDNN and cuDNN convolve fastest (about 15 % on the CPUs
    # measured, same values up to float rounding); inference only
    model = model.to(memory_format=torch.channels_last)
    info = model_info(recipe["model"])
    return model, recipe, "pytorch", (info.segments, info.multitask)


def load(
    source: str | Path | Sequence[str | Path],
    *,
    fold: int | None = None,
    device: str = "cpu",
    tta: bool = False,
    postprocess=None,
    batch_size: int = 8,
    onnx_threads: int | None = None,
) -> Predictor:
    """Load the model(s) of ``source`` into a :class:`Predictor`.

    Args:
        source: a ``train`` run folder, a ``cv`` folder (its fold models: an ensemble, mean of
            probabilities), a checkpoint file, a busseg ONNX file, a folder of ONNX files, or a
            list of these (one ensemble). Every model must share the preprocessing (image size,
            normalisation, channels) and the outputs, since their probabilities are averaged.
        fold: with a cv folder, keep only this fold's model.
        device: ``"cpu"`` or ``"cuda"``.
        tta: also average the horizontal and vertical flips.
        postprocess: see :func:`resolve_postprocess` (default: threshold 0.5 only).
        batch_size: images per forward pass when called on a list.
        onnx_threads: onnxruntime intra-op threads (default: one per core).
    """
    sources = [source] if isinstance(source, (str, Path)) else list(source)
    if not sources:
        raise ConfigError("no model given to load")
    found: list[Path] = []
    for item in sources:
        entries = find_models(item)
        if fold is not None:
            entries = [(k, path) for k, path in entries if k == fold]
            if not entries:
                raise ConfigError(f"{item}: no model of fold {fold}")
        found.extend(path for _, path in entries)
    loaded = [_load_one(path, device, onnx_threads) for path in found]
    models, recipes, backends, outputs = (list(column) for column in zip(*loaded))
    first = recipes[0]
    for path, recipe, backend, out in zip(found[1:], recipes[1:], backends[1:], outputs[1:]):
        if backend != backends[0]:
            raise CheckpointError(f"{path}: a {backend} model cannot join {backends[0]} models in one ensemble")
        for key in ("image_size", "normalization", "in_channels"):
            if recipe[key] != first[key]:
                raise CheckpointError(f"{path}: {key} {recipe[key]!r} differs from {first[key]!r} of {found[0]}; "
                                      "an ensemble needs one preprocessing")
        if out != outputs[0]:
            raise CheckpointError(f"{path}: its outputs (segmentation, classification) = {out} differ from "
                                  f"{outputs[0]} of {found[0]}; an ensemble averages the same outputs")
    return Predictor(models, first, found, backend=backends[0], device=device, segments=outputs[0][0],
                     classifies=outputs[0][1], tta=tta, postprocess=postprocess, batch_size=batch_size)


__all__ = [
    "CLASS_NAMES",
    "Prediction",
    "Predictor",
    "find_models",
    "load",
    "resize_probability",
    "resolve_postprocess",
    "run_checkpoint",
]
