"""Prediction on a user's own scans: masks, measurements and overlays for a folder of images.

``predict(model, inputs, out_dir)`` reads every image (PNG, JPEG, BMP, TIFF, DICOM) of
``inputs`` (a file, a folder searched recursively, a list file, or several of these), applies a
:class:`~busseg.inference.predictor.Predictor` (one model or the ensemble of a ``cv`` run's fold
models; PyTorch checkpoints or ONNX files) and writes into ``out_dir``::

    masks/<id>.png            the predicted mask at the image's original size (0 / 255)
    overlays/<id>.png         the mask over the image (busseg's one colour convention)
    probabilities/<id>.png    the foreground probability x 255 (only with save_probabilities)
    rows/<id>.json            the image's row; written last, it marks the image as finished
    predictions.csv / .json   one row per image (see below), in input order
    failures.csv              every file that could not be read or written, and why
    settings.json, summary.json

Ids and output names: an image's ``<id>`` is its path relative to the folder or list file it was
found through (a file given by itself: its file name), suffix included — ``scans/sub/a.jpg``
given as ``scans`` is ``sub/a.jpg`` and its mask ``masks/sub/a.jpg.png``. An id depends on the
file alone, not on the other inputs, so ``dup.png``, ``dup.jpg`` and ``dup_png.png`` get three
outputs, and a folder gives the same ids whether it is predicted alone or with other inputs, as
a folder, as files or through a list. Two inputs that would share an id (``a/x.png`` and
``b/x.png`` given as two folders) are refused: give their common folder instead.

A row holds the image size, the pixel spacing (read from DICOM files, or ``pixel_spacing`` given
by the user) and the measurements of :mod:`busseg.inference.measurements` (lesion found, area
in px and mm², bounding box, maximum diameter, orientation, circularity), the peak foreground
probability, the class probabilities of multi-task models, and the SHA-256 of the input file
and of the model files (``input_sha256``, ``model_sha256``). How a mask is computed (training's
preprocessing, ensemble and flips, resizing back, post-processing) is defined once in
:mod:`busseg.inference.predictor`.

Robustness: a file that cannot be read (corrupt, truncated, unsupported, multi-frame) is
reported — a warning, ``failures.csv`` and the summary — and skipped; the others are still
written. Every output is written atomically, so an interrupted run can simply be started again
with the same command: an image counts as finished only when its row exists, its outputs exist
and the row was made from the same input content and the same model files (an input replaced
under the same name, or a checkpoint retrained in place, is predicted again). ``settings.json``
records what produced the outputs; restarting into the same folder with other models or
options is refused (``overwrite=True`` recomputes everything).

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
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Sequence

import numpy as np
import torch

from busseg.data.imageio import IMAGE_SUFFIXES, is_dicom
from busseg.errors import ConfigError, DataError, OutputError
from busseg.inference.measurements import check_spacing
from busseg.inference.predictor import Predictor, load
from busseg.fileio import atomic_write_bytes, atomic_write_csv, atomic_write_json, atomic_write_text, file_sha256
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
    #: path relative to the folder or list file it was found through (its file name when given
    #: by itself), POSIX separators, suffix included: unique among the inputs, and the name of
    #: its outputs (``masks/<id>.png``).
    id: str


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
    images: dict[str, InputImage] = {}
    for path, root in unique.items():
        image = InputImage(path=path, id=path.relative_to(root).as_posix())
        if image.id in images:
            other = images[image.id].path
            raise ConfigError(
                f"two inputs would share the id and outputs {image.id!r}: {other} and {path}; give their "
                f"common folder ({os.path.commonpath([other, path])}) instead, or predict them into separate "
                "output folders"
            )
        images[image.id] = image
    return list(images.values()), problems


# ------------------------------------------------------------------------------ per image


@dataclass
class _Decoded:
    item: InputImage
    image: np.ndarray  # uint8 [H, W], original size
    spacing: tuple[float, float] | None
    spacing_source: str
    tensor: torch.Tensor  # [C, S, S], normalised
    sha256: str  # of the input file's bytes


def _decode(item: InputImage, predictor: Predictor, default_spacing) -> _Decoded:
    digest = file_sha256(item.path)
    image, spacing = predictor.read(item.path)
    source = "dicom"
    if spacing is None and default_spacing is not None:
        spacing, source = tuple(default_spacing), "given"
    return _Decoded(item, image, spacing, source if spacing else "", predictor.preprocess(image), digest)


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
        return self.out / "rows" / f"{item.id}.json"

    def mask(self, item: InputImage) -> Path:
        return self.out / "masks" / f"{item.id}.png"

    def overlay(self, item: InputImage) -> Path:
        return self.out / "overlays" / f"{item.id}.png"

    def probability(self, item: InputImage) -> Path:
        return self.out / "probabilities" / f"{item.id}.png"


def _finish(decoded: _Decoded, probability: np.ndarray | None, p_malignant: float | None,
            predictor: Predictor, layout: _Layout, model_sha256: str) -> dict:
    """Finish one image's prediction (resize back, post-process, measure: runs in the I/O
    threads), write its outputs and return its row; the row file comes last (it marks
    completion)."""
    prediction = predictor.finish(probability, decoded.image.shape, p_malignant, decoded.spacing)
    item = decoded.item
    h, w = decoded.image.shape
    row: dict[str, Any] = {
        "id": item.id, "file": str(item.path), "height": h, "width": w,
        "pixel_spacing_row_mm": decoded.spacing[0] if decoded.spacing else None,
        "pixel_spacing_col_mm": decoded.spacing[1] if decoded.spacing else None,
        "spacing_source": decoded.spacing_source,
    }
    if prediction.mask is not None:
        row["max_probability"] = float(prediction.probability.max())
        row.update(prediction.measurements)
        atomic_write_bytes(layout.mask(item), png_bytes(prediction.mask.astype(np.uint8) * 255))
        row["mask"] = layout.mask(item).relative_to(layout.out).as_posix()
        if layout.overlays:
            overlay = overlay_prediction(decoded.image, prediction.mask, alpha=OVERLAY_ALPHA)
            atomic_write_bytes(layout.overlay(item), png_bytes(overlay))
            row["overlay"] = layout.overlay(item).relative_to(layout.out).as_posix()
        if layout.probabilities:
            atomic_write_bytes(layout.probability(item), png_bytes(np.round(prediction.probability * 255).astype(np.uint8)))
            row["probability"] = layout.probability(item).relative_to(layout.out).as_posix()
    if prediction.class_probabilities is not None:
        row["prob_benign"] = prediction.class_probabilities["benign"]
        row["prob_malignant"] = prediction.class_probabilities["malignant"]
        row["predicted_class"] = prediction.predicted_class
    row["input_sha256"] = decoded.sha256
    row["model_sha256"] = model_sha256
    atomic_write_json(layout.row(item), row)
    return row


def _finished_row(layout: _Layout, item: InputImage, model_sha256: str) -> dict | None:
    """The row of an image already predicted from this very input and these very models with
    all its outputs present, else ``None``."""
    path = layout.row(item)
    if not path.is_file():
        return None
    try:
        row = json.loads(path.read_text())
    except (OSError, ValueError):
        return None
    if not isinstance(row, dict) or row.get("model_sha256") != model_sha256:
        return None
    for key in ("mask", "overlay", "probability"):
        if key in row and not (layout.out / row[key]).is_file():
            return None
    try:
        if row.get("input_sha256") != file_sha256(item.path):
            return None
    except OSError:
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


def _settings(predictor: Predictor, pixel_spacing, overlays: bool, probabilities: bool) -> dict:
    return {
        "models": [{"file": str(p.resolve()), "bytes": p.stat().st_size, "sha256": file_sha256(p)}
                   for p in predictor.sources],
        "backend": predictor.backend,
        "model": predictor.recipe["model"],
        "preprocessing": {k: predictor.recipe[k] for k in ("image_size", "normalization", "in_channels")},
        "tta": predictor.tta,
        "postprocess": predictor.postprocess.to_dict(),
        "pixel_spacing": list(pixel_spacing) if pixel_spacing is not None else None,
        "overlays": bool(overlays),
        "save_probabilities": bool(probabilities),
    }


def _without_contents(settings: dict) -> dict:
    """Settings with the model files named but not fingerprinted (what a user chose)."""
    return {**settings, "models": [m.get("file") for m in settings.get("models", [])]}


def _check_restart(out: Path, settings: dict, overwrite: bool) -> None:
    """Refuse to mix outputs of other models or options in ``out``; a model file retrained in
    place is no reason to refuse (its images are predicted again, see :func:`_finished_row`)."""
    path = out / SETTINGS_FILE
    if path.is_file() and not overwrite:
        try:
            previous = json.loads(path.read_text())
        except (OSError, ValueError):
            previous = None
        if isinstance(previous, dict):
            chosen, before = _without_contents(settings), _without_contents(previous)
            if chosen != before:
                changed = sorted(k for k in set(chosen) | set(before) if chosen.get(k) != before.get(k))
                raise ConfigError(
                    f"{out} holds predictions made with other settings (different {', '.join(changed)}); "
                    "choose another output folder, or overwrite=True (--overwrite) to recompute them"
                )
            if previous.get("models") != settings["models"]:
                log.warning("the model files changed since the predictions in %s were made (retrained in "
                            "place?): every image is predicted again", out)
    atomic_write_json(path, settings)


def predict(
    models: Predictor | str | Path | Sequence[str | Path],
    inputs: str | Path | Sequence[str | Path],
    out_dir: str | Path,
    *,
    fold: int | None = None,
    tta: bool | None = None,
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
        models: a :class:`~busseg.inference.predictor.Predictor`, or what
            :func:`busseg.inference.predictor.load` loads (run or cv folders, checkpoints, ONNX
            files or folders of them).
        fold: with a cv folder, use only this fold's model (default: the ensemble of all).
        tta: average the identity with the horizontal and vertical flips (default: off, or the
            given predictor's setting).
        postprocess: see :func:`~busseg.inference.predictor.resolve_postprocess` (default:
            threshold 0.5 only, or the given predictor's setting).
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
    if not isinstance(models, Predictor):
        models = load(models, fold=fold, device=device)
    predictor = models.with_options(tta=tta, postprocess=models.postprocess if postprocess is None else postprocess,
                                    batch_size=int(batch_size))
    segments = predictor.segments
    layout = _Layout(out, overlays and segments, save_probabilities and segments)
    items, failures = collect_inputs(inputs, exclude=out)
    for problem in failures:
        log.warning("skipped %s: %s", problem["file"], problem["problem"])
    out.mkdir(parents=True, exist_ok=True)
    settings = _settings(predictor, pixel_spacing, layout.overlays, layout.probabilities)
    _check_restart(out, settings, overwrite)
    model_sha256 = predictor.identity()

    rows: dict[str, dict] = {}
    todo = []
    for item in items:
        row = None if overwrite else _finished_row(layout, item, model_sha256)
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
            decoding.append((item, pool.submit(_decode, item, predictor, pixel_spacing)))

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
        seg, cls = predictor.probabilities(torch.stack([d.tensor for d in batch]))
        for i, decoded in enumerate(batch):
            writing.append((decoded.item, pool.submit(
                _finish, decoded, None if seg is None else seg[i], None if cls is None else float(cls[i]),
                predictor, layout, model_sha256)))
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
        atomic_write_csv(out / "predictions.csv", ordered)
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
        "postprocess": predictor.postprocess.describe(),
        "settings": settings,
        "columns": list(ordered[0]) if ordered else [],
    }
    atomic_write_json(out / "summary.json", summary)
    return summary


__all__ = ["InputImage", "collect_inputs", "png_bytes", "predict"]
