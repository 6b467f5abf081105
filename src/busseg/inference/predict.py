"""Prediction on a user's own scans: masks, measurements and overlays for a folder of images.

``predict(models, inputs, out_dir)`` reads every image (PNG, JPEG, BMP, TIFF, DICOM) of
``inputs`` (a file, a folder searched recursively, a list file, or several of these), runs one
model or the ensemble of the fold models of a ``cv`` run (PyTorch checkpoints, or ONNX files run
by onnxruntime), and writes into ``out_dir``::

    masks/<name>.png          the predicted mask at the image's original size (0 / 255)
    overlays/<name>.png       the mask over the image (busseg's one colour convention)
    probabilities/<name>.png  the foreground probability x 255 (only with save_probabilities)
    rows/<name>.json          the image's row; written last, it marks the image as finished
    predictions.csv / .json   one row per image (see below), in input order
    failures.csv              every file that could not be read or written, and why
    settings.json, summary.json

``<name>`` is the image's path relative to the input folder without its suffix (with the suffix
kept as ``_png``/``_dcm`` where two inputs would otherwise share a name). A row holds the image
size, the pixel spacing (read from DICOM files, or ``pixel_spacing`` given by the user) and the
measurements of :mod:`busseg.inference.measurements` (lesion found, area in px and mm²,
bounding box, maximum diameter, orientation, circularity), the peak foreground probability, and
the class probabilities of multi-task models.

Preprocessing is training's, from the recipe stored with the model: grayscale uint8, Pillow
bilinear resize to ``image_size``², :func:`busseg.data.preprocess.normalize`, the channel
repeated ``in_channels`` times. Probabilities come from
:func:`busseg.engine.evaluate.predict_probabilities` (ensemble and test-time flips: mean of
probabilities). The probability map is resized back to the original size (bilinear, the
resampling nnU-Net applies to probabilities rather than to hard masks, so the boundary keeps its
sub-pixel position) and thresholded/post-processed there. Post-processing sizes
(``min_component_px``, ``smooth_radius``) given without ``reference_size`` are read in network
pixels (``image_size``², as ``busseg evaluate`` applies them) and scaled to every image's own
size, so one setting removes the same fraction of every image.

Robustness: a file that cannot be read (corrupt, truncated, unsupported, multi-frame) is
reported — a warning, ``failures.csv`` and the summary — and skipped; the others are still
written. Every output is written atomically, so an interrupted run can simply be started again
with the same command: images whose row exists are skipped. ``settings.json`` records what
produced the outputs; restarting into the same folder with other models or options is refused
(``overwrite=True`` recomputes everything).

Throughput: decoding and writing run in a thread pool (Pillow, zlib and most NumPy/SciPy work
release the GIL) while the main thread runs the model, with a bounded look-ahead so memory stays
flat on large folders.
"""

from __future__ import annotations

import io
import json
import logging
import os
import struct
import time
import zlib
from collections import deque
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any, Sequence

import numpy as np
import torch
from PIL import Image

from busseg.data.imageio import IMAGE_SUFFIXES, is_dicom, read_image, read_pixel_spacing
from busseg.data.preprocess import normalize, resize_image
from busseg.engine.evaluate import find_fold_checkpoints, load_checkpoint, predict_probabilities, write_rows_csv
from busseg.engine.io import atomic_write_bytes, atomic_write_json, atomic_write_text
from busseg.errors import CheckpointError, ConfigError, DataError, OutputError
from busseg.inference.measurements import check_spacing, lesion_measurements
from busseg.postprocess import PostprocessConfig, postprocess_mask
from busseg.viz.overlay import overlay_prediction

log = logging.getLogger(__name__)

#: list files: one image path per line (relative to the list file's folder), ``#`` comments.
LIST_SUFFIXES = (".txt", ".lst", ".list")
SETTINGS_FILE = "settings.json"
#: zlib level of written PNGs: level 1 is several times faster than Pillow's default 6 for
#: the same lossless pixels (files about 10-20 % larger).
PNG_COMPRESS_LEVEL = 1
#: opacity of the mask in the overlays (busseg.viz.overlay's default).
OVERLAY_ALPHA = 0.45


# ------------------------------------------------------------------------------------ inputs


@dataclass(frozen=True)
class InputImage:
    path: Path
    #: path relative to the input root (POSIX separators), shown in the outputs.
    id: str
    #: output file name without suffix, unique among the inputs.
    name: str


def _is_hidden(path: Path, root: Path) -> bool:
    return any(part.startswith(".") for part in path.relative_to(root).parts)


def _within(path: Path, folder: Path | None) -> bool:
    if folder is None:
        return False
    try:
        path.relative_to(folder)
        return True
    except ValueError:
        return False


def _readable_kind(path: Path) -> bool:
    suffix = path.suffix.lower()
    return suffix in IMAGE_SUFFIXES or (suffix == "" and is_dicom(path))


def _read_list_file(path: Path) -> list[Path]:
    try:
        lines = path.read_text().splitlines()
    except (OSError, UnicodeDecodeError) as exc:
        raise DataError(f"{path}: cannot read list file ({exc})") from None
    entries = []
    for line in lines:
        line = line.strip()
        if line and not line.startswith("#"):
            entry = Path(line).expanduser()
            entries.append(entry if entry.is_absolute() else path.parent / entry)
    if not entries:
        raise DataError(f"{path}: list file names no image")
    return entries


def collect_inputs(
    inputs: str | Path | Sequence[str | Path], exclude: str | Path | None = None
) -> tuple[list[InputImage], list[dict]]:
    """The images named by ``inputs`` and the files that cannot be used.

    ``inputs``: one or several image files, folders (searched recursively; hidden files and
    folders skipped) and list files (``.txt``/``.lst``/``.list``). Files inside ``exclude``
    (the output folder) are never inputs. Returns ``(images, problems)``; ``problems`` are rows
    ``{"file", "stage": "input", "problem"}`` for missing files and files of a type busseg does
    not read. Raises :class:`ConfigError` when nothing usable remains.
    """
    if isinstance(inputs, (str, Path)):
        inputs = [inputs]
    exclude_dir = Path(exclude).resolve() if exclude is not None else None
    found: list[tuple[Path, Path]] = []  # (file, root it is named relative to)
    problems: list[dict] = []

    def problem(path: Path, why: str) -> None:
        problems.append({"file": str(path), "stage": "input", "problem": why})

    def add_file(path: Path, root: Path) -> None:
        if _readable_kind(path):
            found.append((path, root))
        else:
            problem(path, f"unsupported file type {path.suffix or '(no suffix, not DICOM)'}; busseg reads "
                          f"{', '.join(IMAGE_SUFFIXES)} files and DICOM files without a suffix")

    for raw in inputs:
        source = Path(raw).expanduser()
        if not source.exists():
            problem(source, "file or folder not found")
        elif source.is_dir():
            root = source.resolve()
            for dirpath, dirnames, filenames in os.walk(root):
                here = Path(dirpath)
                dirnames[:] = sorted(d for d in dirnames
                                     if not d.startswith(".") and not _within((here / d).resolve(), exclude_dir))
                for name in sorted(filenames):
                    if not name.startswith("."):
                        add_file(here / name, root)
        elif source.suffix.lower() in LIST_SUFFIXES:
            for entry in _read_list_file(source):
                if not entry.is_file():
                    problem(entry, f"listed in {source} but not found")
                else:  # named relative to the list's folder when inside it
                    entry = entry.resolve()
                    list_dir = source.parent.resolve()
                    add_file(entry, list_dir if _within(entry, list_dir) else entry.parent)
        else:
            add_file(source.resolve(), source.resolve().parent)

    unique: dict[Path, Path] = {}
    for path, root in found:
        if not _within(path, exclude_dir):
            unique.setdefault(path, root)
    if not unique:
        shown = "; ".join(f"{p['file']}: {p['problem']}" for p in problems[:5])
        raise ConfigError(f"no image to predict in {', '.join(map(str, inputs))}" + (f" ({shown})" if shown else ""))
    roots = {root for root in unique.values()}
    base = Path(os.path.commonpath([str(r) for r in roots]))
    ids = {path: path.relative_to(base).as_posix() for path in unique}
    stems = [i.rsplit(".", 1)[0] if "." in Path(i).name else i for i in ids.values()]
    folded = [s.lower() for s in stems]  # case-insensitive file systems
    images = []
    for (path, sample_id), stem, low in zip(ids.items(), stems, folded):
        name = stem if folded.count(low) == 1 else sample_id.replace(".", "_")
        images.append(InputImage(path=path, id=sample_id, name=name))
    return images, problems


# ------------------------------------------------------------------------------------ models


@dataclass
class Predictor:
    """The model(s) of one prediction: a single model or an ensemble sharing preprocessing."""

    models: list
    recipe: dict
    sources: list[Path]
    backend: str  # "pytorch" | "onnx"
    device: str = "cpu"
    outputs: tuple[bool, bool] = (True, False)  # (segments, classifies)

    @property
    def image_size(self) -> int:
        return int(self.recipe["image_size"])

    def describe(self) -> str:
        what = f"{len(self.models)} {self.recipe['model']} models (ensemble)" if len(self.models) > 1 else self.recipe["model"]
        precisions = sorted({getattr(m, "precision", "fp32") for m in self.models})
        backend = self.backend if precisions == ["fp32"] else f"{self.backend} {'+'.join(precisions)}"
        return f"{what}, {backend} on {self.device}, {self.image_size}x{self.image_size}"


def _onnx_files(source: Path) -> list[Path]:
    if source.is_dir():
        files = sorted(source.glob("*.onnx"))
        if not files:
            raise CheckpointError(f"{source}: no .onnx file in this folder")
        return files
    return [source]


def load_predictor(
    sources: str | Path | Sequence[str | Path],
    *,
    onnx: bool = False,
    fold: int | None = None,
    device: str = "cpu",
    onnx_threads: int | None = None,
) -> Predictor:
    """Load the model(s) to predict with.

    ``sources``: checkpoint files, ``train`` run folders or ``cv`` folders (every fold's best
    model: an ensemble; ``fold`` keeps one), or with ``onnx`` busseg ONNX files or folders of
    them. Every model must share the preprocessing (image size, normalisation, channels) and
    the outputs (segmentation / classification), since their probabilities are averaged.
    """
    if isinstance(sources, (str, Path)):
        sources = [sources]
    for source in sources:
        if not Path(source).exists():
            raise CheckpointError(f"model {source} does not exist")
    models, recipes, files, outputs = [], [], [], []
    if onnx:
        from busseg.inference.onnx_runner import CLS_OUTPUT, SEG_OUTPUT, load_onnx_model

        for source in sources:
            for path in _onnx_files(Path(source)):
                model, recipe = load_onnx_model(path, device=device, threads=onnx_threads)
                models.append(model), recipes.append(recipe), files.append(path)
                outputs.append((SEG_OUTPUT in model.outputs, CLS_OUTPUT in model.outputs))
    else:
        from busseg.models import model_info

        for source in sources:
            checkpoints = find_fold_checkpoints(source)
            if fold is not None:
                checkpoints = [(k, c) for k, c in checkpoints if k == fold]
                if not checkpoints:
                    raise ConfigError(f"{source}: no model of fold {fold}")
            for _, ckpt in checkpoints:
                model, recipe = load_checkpoint(ckpt, device=device)
                # channels-last is the layout oneDNN and cuDNN convolve fastest (about 15 % on
                # the CPUs measured, same values up to float rounding); inference only, so the
                # weights' layout does not matter elsewhere
                model = model.to(memory_format=torch.channels_last)
                models.append(model), recipes.append(recipe), files.append(ckpt)
                info = model_info(recipe["model"])
                outputs.append((info.segments, info.multitask))
    if not models:
        raise CheckpointError(f"no model found in {', '.join(map(str, sources))}")
    first = recipes[0]
    for path, recipe, out in zip(files[1:], recipes[1:], outputs[1:]):
        for key in ("image_size", "normalization", "in_channels"):
            if recipe[key] != first[key]:
                raise CheckpointError(
                    f"{path}: {key} {recipe[key]!r} differs from {first[key]!r} of {files[0]}; "
                    "an ensemble needs one preprocessing"
                )
        if out != outputs[0]:
            raise CheckpointError(f"{path}: its outputs (segmentation, classification) = {out} differ from "
                                  f"{outputs[0]} of {files[0]}; an ensemble averages the same outputs")
    return Predictor(models=models, recipe=first, sources=files, backend="onnx" if onnx else "pytorch",
                     device=str(device), outputs=outputs[0])


# ------------------------------------------------------------------------------ per image


@dataclass
class _Decoded:
    item: InputImage
    image: np.ndarray  # uint8 [H, W], original size
    spacing: tuple[float, float] | None
    spacing_source: str
    tensor: torch.Tensor  # [C, S, S], normalised


def _decode(item: InputImage, recipe: dict, default_spacing) -> _Decoded:
    image = read_image(item.path)
    spacing, source = read_pixel_spacing(item.path), "dicom"
    if spacing is None and default_spacing is not None:
        spacing, source = tuple(default_spacing), "given"
    small = resize_image(image, int(recipe["image_size"]))
    x = torch.from_numpy(normalize(small, recipe["normalization"]))
    return _Decoded(item, image, spacing, source if spacing else "", x[None].repeat(int(recipe["in_channels"]), 1, 1))


def resize_probability(prob: np.ndarray, shape: tuple[int, int]) -> np.ndarray:
    """A probability map ``[S, S]`` resized bilinearly to ``shape`` (rows, cols), in [0, 1]."""
    prob = np.asarray(prob, np.float32)
    if prob.shape == tuple(shape):
        return prob
    resized = Image.fromarray(prob, mode="F").resize((shape[1], shape[0]), Image.BILINEAR)
    return np.clip(np.asarray(resized, np.float32), 0.0, 1.0)


def _png_chunk(kind: bytes, data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))


def png_bytes(array: np.ndarray, compress_level: int = PNG_COMPRESS_LEVEL) -> bytes:
    """An 8-bit grayscale ``[H, W]`` or RGB ``[H, W, 3]`` uint8 array as a PNG file (lossless).

    Written directly (PNG specification: IHDR, one IDAT, IEND) rather than through Pillow,
    which tries all five row filters on every row of an RGB image (its "adaptive" filtering)
    and so spends about 40 % of the encoding time choosing filters. Here every row uses the
    "Sub" filter (each byte minus the same channel of the previous pixel), which on ultrasound
    overlays and masks compresses as well as Pillow's choice (within 1 %) at about 60 % of
    the time. zlib releases the GIL while compressing, so the I/O threads encode in parallel."""
    array = np.asarray(array)
    if array.dtype != np.uint8 or not (array.ndim == 2 or (array.ndim == 3 and array.shape[2] == 3)):
        raise DataError(f"PNG writer: expected uint8 [H, W] or [H, W, 3], got {array.dtype} {array.shape}")
    height, width = array.shape[:2]
    channels = 1 if array.ndim == 2 else 3
    pixels = np.ascontiguousarray(array).reshape(height, width * channels)
    rows = np.empty((height, width * channels + 1), np.uint8)
    rows[:, 0] = 1  # filter type Sub
    rows[:, 1 : channels + 1] = pixels[:, :channels]
    np.subtract(pixels[:, channels:], pixels[:, :-channels], out=rows[:, channels + 1 :])  # modulo 256
    header = struct.pack(">IIBBBBB", width, height, 8, 0 if channels == 1 else 2, 0, 0, 0)
    return (b"\x89PNG\r\n\x1a\n" + _png_chunk(b"IHDR", header)
            + _png_chunk(b"IDAT", zlib.compress(rows.tobytes(), compress_level)) + _png_chunk(b"IEND", b""))




@dataclass
class _Layout:
    out: Path
    overlays: bool
    probabilities: bool

    def row(self, item: InputImage) -> Path:
        return self.out / "rows" / f"{item.name}.json"

    def mask(self, item: InputImage) -> Path:
        return self.out / "masks" / f"{item.name}.png"

    def overlay(self, item: InputImage) -> Path:
        return self.out / "overlays" / f"{item.name}.png"

    def probability(self, item: InputImage) -> Path:
        return self.out / "probabilities" / f"{item.name}.png"


def _finish(decoded: _Decoded, prob: np.ndarray | None, p_malignant: float | None,
            config: PostprocessConfig, layout: _Layout) -> dict:
    """Measure and write one image's outputs; the row file comes last (it marks completion)."""
    item = decoded.item
    h, w = decoded.image.shape
    row: dict[str, Any] = {
        "id": item.id, "file": str(item.path), "height": h, "width": w,
        "pixel_spacing_row_mm": decoded.spacing[0] if decoded.spacing else None,
        "pixel_spacing_col_mm": decoded.spacing[1] if decoded.spacing else None,
        "spacing_source": decoded.spacing_source,
    }
    if prob is not None:
        full = resize_probability(prob, (h, w))
        mask = postprocess_mask(full, config)
        row["max_probability"] = float(full.max())
        row.update(lesion_measurements(mask, decoded.spacing))
        atomic_write_bytes(layout.mask(item), png_bytes(mask.astype(np.uint8) * 255))
        row["mask"] = layout.mask(item).relative_to(layout.out).as_posix()
        if layout.overlays:
            atomic_write_bytes(layout.overlay(item), png_bytes(overlay_prediction(decoded.image, mask, alpha=OVERLAY_ALPHA)))
            row["overlay"] = layout.overlay(item).relative_to(layout.out).as_posix()
        if layout.probabilities:
            atomic_write_bytes(layout.probability(item), png_bytes(np.round(full * 255).astype(np.uint8)))
            row["probability"] = layout.probability(item).relative_to(layout.out).as_posix()
    if p_malignant is not None:
        row["prob_benign"] = 1.0 - float(p_malignant)
        row["prob_malignant"] = float(p_malignant)
        row["predicted_class"] = "malignant" if p_malignant > 0.5 else "benign"
    atomic_write_json(layout.row(item), row)
    return row


def _load_row(layout: _Layout, item: InputImage) -> dict | None:
    path = layout.row(item)
    if not path.is_file():
        return None
    try:
        row = json.loads(path.read_text())
    except (OSError, ValueError):
        return None
    for key in ("mask", "overlay", "probability"):
        if key in row and not (layout.out / row[key]).is_file():
            return None
    return row


def _write_failures(failures: list[dict], path: Path) -> None:
    """``file,stage,problem`` rows; written (header only) even when nothing failed, so that a
    restarted run never leaves the previous run's failures behind."""
    import csv

    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=["file", "stage", "problem"])
    writer.writeheader()
    writer.writerows(failures)
    atomic_write_text(path, buffer.getvalue())


# ---------------------------------------------------------------------------------- driver


def resolve_postprocess(postprocess, recipe: dict) -> PostprocessConfig:
    """``None`` (threshold 0.5 only), ``"paper"``, ``"recipe"`` (the recipe's own setting), a
    mapping or a :class:`PostprocessConfig`. Sizes without a ``reference_size`` are taken as
    network pixels (``image_size``²) and scaled to each image (module docstring)."""
    if postprocess == "recipe":
        postprocess = recipe.get("postprocess")
    elif postprocess == "paper":
        postprocess = {"preset": "paper"}
    config = PostprocessConfig.from_dict(postprocess)
    if config.reference_size is None and not config.is_identity:
        config = replace(config, reference_size=int(recipe["image_size"]))
    return config


def _settings(predictor: Predictor, tta: bool, config: PostprocessConfig, pixel_spacing, overlays: bool,
              probabilities: bool) -> dict:
    return {
        "models": [{"file": str(p.resolve()), "bytes": p.stat().st_size} for p in predictor.sources],
        "backend": predictor.backend,
        "model": predictor.recipe["model"],
        "preprocessing": {k: predictor.recipe[k] for k in ("image_size", "normalization", "in_channels")},
        "tta": bool(tta),
        "postprocess": config.to_dict(),
        "pixel_spacing": list(pixel_spacing) if pixel_spacing is not None else None,
        "overlays": bool(overlays),
        "save_probabilities": bool(probabilities),
    }


def _check_restart(out: Path, settings: dict, overwrite: bool) -> None:
    path = out / SETTINGS_FILE
    if path.is_file() and not overwrite:
        try:
            previous = json.loads(path.read_text())
        except (OSError, ValueError):
            previous = None
        if previous is not None and previous != settings:
            changed = sorted(k for k in set(settings) | set(previous) if settings.get(k) != previous.get(k))
            raise ConfigError(
                f"{out} holds predictions made with other settings (different {', '.join(changed)}); "
                "choose another output folder, or overwrite=True (--overwrite) to recompute them"
            )
    atomic_write_json(path, settings)


def predict(
    models: Predictor | str | Path | Sequence[str | Path],
    inputs: str | Path | Sequence[str | Path],
    out_dir: str | Path,
    *,
    onnx: bool = False,
    fold: int | None = None,
    tta: bool = False,
    postprocess=None,
    pixel_spacing: tuple[float, float] | None = None,
    batch_size: int = 8,
    workers: int = 2,
    device: str = "cpu",
    overlays: bool = True,
    save_probabilities: bool = False,
    overwrite: bool = False,
    progress: bool = True,
) -> dict:
    """Predict every image of ``inputs`` into ``out_dir`` (see the module docstring).

    Args:
        models: a :class:`Predictor`, or what :func:`load_predictor` loads (checkpoints, run or
            cv folders; ONNX files with ``onnx``).
        fold: with a cv folder, use only this fold's model (default: the ensemble of all).
        tta: average the identity with the horizontal and vertical flips.
        postprocess: see :func:`resolve_postprocess`.
        pixel_spacing: ``(row, col)`` mm per pixel for images that record none (DICOM files
            that record one keep theirs).
        batch_size: images per forward pass; workers: decode/write threads.
        overwrite: recompute images that are already finished.

    Returns:
        the summary also written to ``summary.json``: counts (inputs, predicted now, already
        finished, failed), the failures, timing (``images_per_s`` of this run, decoding and
        writing included) and the settings.
    """
    if int(batch_size) < 1 or int(workers) < 1:
        raise ConfigError(f"batch_size ({batch_size}) and workers ({workers}) must be >= 1")
    pixel_spacing = check_spacing(pixel_spacing)
    out = Path(out_dir)
    predictor = models if isinstance(models, Predictor) else load_predictor(
        models, onnx=onnx, fold=fold, device=device)
    recipe = predictor.recipe
    config = resolve_postprocess(postprocess, recipe)
    segments = predictor.outputs[0]
    layout = _Layout(out, overlays and segments, save_probabilities and segments)
    items, failures = collect_inputs(inputs, exclude=out)
    for problem in failures:
        log.warning("skipped %s: %s", problem["file"], problem["problem"])
    out.mkdir(parents=True, exist_ok=True)
    settings = _settings(predictor, tta, config, pixel_spacing, layout.overlays, layout.probabilities)
    _check_restart(out, settings, overwrite)

    rows: dict[str, dict] = {}
    todo = []
    for item in items:
        row = None if overwrite else _load_row(layout, item)
        if row is None:
            todo.append(item)
        else:
            rows[item.id] = row
    n_done_before = len(rows)
    if n_done_before:
        log.info("%d of %d images already predicted in %s; skipping them", n_done_before, len(items), out)

    from busseg.console import progress_bar

    bar = progress_bar(total=len(todo), desc="predicting", unit="img", enabled=progress, leave=True)
    start = time.perf_counter()
    amp = torch.device(predictor.device).type == "cuda" and predictor.backend == "pytorch"
    look_ahead = max(2 * int(batch_size), int(workers))
    pool = ThreadPoolExecutor(max_workers=int(workers), thread_name_prefix="busseg-io")
    decoding: deque[tuple[InputImage, Future]] = deque()
    writing: deque[tuple[InputImage, Future]] = deque()
    queue = iter(todo)

    def fail(item: InputImage, stage: str, exc: BaseException) -> None:
        message = str(exc) if isinstance(exc, DataError) else f"{type(exc).__name__}: {exc}"
        failures.append({"file": str(item.path), "stage": stage, "problem": message})
        log.warning("skipped %s (%s): %s", item.id, stage, message)

    def top_up() -> None:
        while len(decoding) < look_ahead:
            item = next(queue, None)
            if item is None:
                return
            decoding.append((item, pool.submit(_decode, item, recipe, pixel_spacing)))

    def harvest(limit: int) -> None:
        while len(writing) > limit:
            item, future = writing.popleft()
            try:
                rows[item.id] = future.result()
            except OutputError:
                raise  # an output that cannot be written (disk full, read-only) stops the run
            except (DataError, OSError) as exc:
                fail(item, "write", exc)
            bar.update(1)

    def run_batch(batch: list[_Decoded]) -> None:
        x = torch.stack([d.tensor for d in batch])
        seg, cls = predict_probabilities(predictor.models, x, batch_size=len(batch), device=predictor.device,
                                         tta=tta, amp=amp)
        for i, decoded in enumerate(batch):
            writing.append((decoded.item, pool.submit(
                _finish, decoded, None if seg is None else seg[i], None if cls is None else float(cls[i]),
                config, layout)))
        harvest(2 * int(batch_size))

    try:
        top_up()
        batch: list[_Decoded] = []
        while decoding:
            item, future = decoding.popleft()
            top_up()
            try:
                batch.append(future.result())
            except (DataError, OSError) as exc:
                fail(item, "read", exc)
                bar.update(1)
            if len(batch) == int(batch_size):
                run_batch(batch)
                batch = []
        if batch:
            run_batch(batch)
        harvest(0)
    finally:
        pool.shutdown(wait=True, cancel_futures=True)
        bar.close()
    elapsed = time.perf_counter() - start

    ordered = [rows[item.id] for item in items if item.id in rows]
    if ordered:
        write_rows_csv(ordered, out / "predictions.csv")
    atomic_write_json(out / "predictions.json", ordered)
    _write_failures(failures, out / "failures.csv")
    n_now = len(ordered) - n_done_before
    summary = {
        "model": predictor.describe(),
        "n_inputs": len(items),
        "n_predicted": n_now,
        "n_already_done": n_done_before,
        "n_failed": len(failures),
        "n_with_lesion": sum(1 for r in ordered if r.get("lesion_found")) if segments else None,
        "failures": failures,
        "elapsed_s": round(elapsed, 3),
        "images_per_s": round(n_now / elapsed, 3) if n_now and elapsed > 0 else None,
        "postprocess": config.describe(),
        "settings": settings,
        "columns": list(ordered[0]) if ordered else [],
    }
    atomic_write_json(out / "summary.json", summary)
    return summary


__all__ = [
    "InputImage",
    "Predictor",
    "collect_inputs",
    "load_predictor",
    "png_bytes",
    "predict",
    "resize_probability",
    "resolve_postprocess",
]
