"""Decoding, resizing and caching a dataset as arrays, and intensity normalisation.

:func:`prepare` turns records into one :class:`PreparedData` (uint8 images and 0/1 masks at a
fixed square size, with the original sizes kept so that predictions can be mapped back).

Choices (the papers resize to a square and say nothing more):

- images are resized directly to ``image_size x image_size`` (aspect ratio not preserved, no
  padding), as the papers do; ``original_sizes`` keeps (rows, cols) for mapping back;
- images: Pillow's bilinear filter, which widens its support when shrinking (area-like
  anti-aliasing), so down-sampling does not alias speckle;
- masks: the 0/1 mask is resized as a float image with the same filter and thresholded at 0.5,
  which keeps the boundary where it is (nearest-neighbour would shift it by up to half a
  source pixel and alias thin structures).

The cache (``<cache_dir>/prepared/<key>/``: ``images.npy``, ``masks.npy``, ``meta.json``) holds
one entry per (files' contents, size, ids, labels, preprocessing version); plain ``.npy`` files
so that a hit is a straight read (780 BUSI images at 256 px: about 0.1 s). A lookup first computes a cheap key from every file's path,
size and modification time; a miss falls back to the contents' SHA-256 (a copied or touched
dataset is found again without decoding), and only then decodes. Every write is atomic
(temporary file + rename), so concurrent runs never read half-written files.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import shutil
import tempfile
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from PIL import Image

from busseg.data.adapters._common import MAX_LISTED
from busseg.data.imageio import read_sample
from busseg.data.records import SampleRecord
from busseg.errors import ConfigError, DataError
from busseg.fileio import atomic_write_bytes

log = logging.getLogger(__name__)

#: Bumped whenever decoding/resizing changes, so that old cache entries are not reused.
PREPROCESS_VERSION = "prepare/2"  # 2: EXIF orientation honoured
NORMALIZATION_MODES = ("minmax", "zscore", "imagenet")
#: ImageNet mean/std of the RGB channels averaged to one grey channel.
IMAGENET_GRAY_MEAN = 0.449
IMAGENET_GRAY_STD = 0.226


@dataclass
class PreparedData:
    """A dataset decoded and resized; row ``i`` of every array belongs to ``ids[i]``."""

    ids: list[str]
    images: np.ndarray  # uint8 [N, S, S]
    masks: np.ndarray  # uint8 0/1 [N, S, S]
    labels: np.ndarray  # int64 [N]: 0 benign, 1 malignant, -1 normal/unknown
    original_sizes: list[tuple[int, int]]  # (rows, cols) before resizing
    records: list[SampleRecord]
    image_size: int
    _index: dict[str, int] = field(default_factory=dict, init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        self._index = {sample_id: i for i, sample_id in enumerate(self.ids)}

    def __len__(self) -> int:
        return len(self.ids)

    def fingerprint(self) -> str:
        """SHA-256 of exactly what a model sees: ids, labels, and the prepared images and
        masks (so it changes with any file's content, the image size or the preprocessing).
        Runs record it; a finished run is reused only on data with the same fingerprint."""
        if "_fingerprint" not in self.__dict__:
            h = hashlib.sha256(json.dumps([PREPROCESS_VERSION, self.image_size, self.ids,
                                           self.labels.tolist()]).encode())
            h.update(np.ascontiguousarray(self.images).data)
            h.update(np.ascontiguousarray(self.masks).data)
            self.__dict__["_fingerprint"] = h.hexdigest()
        return self.__dict__["_fingerprint"]

    def index_of(self, sample_id: str) -> int:
        try:
            return self._index[sample_id]
        except KeyError:
            raise ConfigError(f"sample id {sample_id!r} is not in this dataset") from None

    def subset(self, ids: Sequence[str]) -> PreparedData:
        """The samples ``ids`` in the given order; unknown ids raise ConfigError naming them."""
        ids = list(ids)
        missing = [i for i in ids if i not in self._index]
        if missing:
            shown = ", ".join(repr(i) for i in missing[:10])
            more = f" and {len(missing) - 10} more" if len(missing) > 10 else ""
            raise ConfigError(
                f"{len(missing)} id(s) not in the prepared dataset: {shown}{more} "
                "(does the split file belong to this dataset?)"
            )
        rows = np.array([self._index[i] for i in ids], dtype=np.int64)
        return PreparedData(
            ids=ids,
            images=self.images[rows],
            masks=self.masks[rows],
            labels=self.labels[rows],
            original_sizes=[self.original_sizes[r] for r in rows],
            records=[self.records[r] for r in rows],
            image_size=self.image_size,
        )


def default_cache_dir() -> Path:
    """``$BUSSEG_CACHE_DIR``, else ``~/.cache/busseg``."""
    env = os.environ.get("BUSSEG_CACHE_DIR")
    return Path(env).expanduser() if env else Path.home() / ".cache" / "busseg"


# ------------------------------------------------------------------------------- resizing


def resize_image(image: np.ndarray, size: int) -> np.ndarray:
    """uint8 [H, W] -> uint8 [size, size] (Pillow bilinear, anti-aliased when shrinking)."""
    if image.shape == (size, size):
        return image.copy()
    return np.asarray(Image.fromarray(image).resize((size, size), Image.BILINEAR), dtype=np.uint8)


def resize_mask(mask: np.ndarray, size: int) -> np.ndarray:
    """bool/0-1 [H, W] -> uint8 0/1 [size, size]: float resize, threshold at 0.5."""
    if mask.shape == (size, size):
        return mask.astype(np.uint8)
    resized = Image.fromarray(mask.astype(np.float32), mode="F").resize((size, size), Image.BILINEAR)
    return (np.asarray(resized) >= 0.5).astype(np.uint8)


# ---------------------------------------------------------------------------------- cache


def _record_files(record: SampleRecord) -> list[str]:
    # plain strings: building Path objects for every file costs more than the stat calls
    return [os.fspath(record.image_path), *map(os.fspath, record.mask_paths)]


def _describe(records: Sequence[SampleRecord], image_size: int) -> list:
    """What, besides the files' bytes, determines the prepared arrays."""
    return [
        PREPROCESS_VERSION,
        int(image_size),
        [[r.id, r.label, bool(r.extra.get("mask_resize", False))] for r in records],
    ]


def _stat_key(records: Sequence[SampleRecord], image_size: int) -> str:
    h = hashlib.sha256(json.dumps(_describe(records, image_size)).encode())
    for record in records:
        for path in _record_files(record):
            try:
                st = os.stat(path)
            except OSError as exc:
                raise DataError(f"{path}: cannot access file ({exc.strerror})") from None
            h.update(f"{os.path.abspath(path)}\0{st.st_size}\0{st.st_mtime_ns}\n".encode())
    return h.hexdigest()[:32]


def _content_key(records: Sequence[SampleRecord], image_size: int) -> str:
    h = hashlib.sha256(json.dumps(_describe(records, image_size)).encode())
    for record in records:
        for path in _record_files(record):
            file_hash = hashlib.sha256()
            try:
                with open(path, "rb") as fh:
                    for chunk in iter(lambda: fh.read(1 << 20), b""):
                        file_hash.update(chunk)
            except OSError as exc:
                raise DataError(f"{path}: cannot read file ({exc.strerror})") from None
            h.update(file_hash.digest())
        h.update(b"|")
    return h.hexdigest()[:32]


def _save_cache(entry: Path, data: PreparedData) -> None:
    """Write a cache entry: a folder with ``images.npy``, ``masks.npy`` and ``meta.json``,
    assembled under a temporary name and renamed into place (atomic)."""
    entry.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{entry.name}.", dir=entry.parent))
    try:
        np.save(tmp / "images.npy", data.images)
        np.save(tmp / "masks.npy", data.masks)
        meta = {
            "version": PREPROCESS_VERSION,
            "image_size": data.image_size,
            "ids": data.ids,
            "labels": data.labels.tolist(),
            "original_sizes": [list(s) for s in data.original_sizes],
        }
        (tmp / "meta.json").write_text(json.dumps(meta))
        try:
            os.replace(tmp, entry)
        except OSError:
            if not (entry / "meta.json").is_file():  # not a concurrent writer of the same entry
                raise
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def _load_cache(entry: Path, records: Sequence[SampleRecord], image_size: int) -> PreparedData | None:
    """The cached arrays of ``entry``, or None when absent or not matching ``records``."""
    if not (entry / "meta.json").is_file():
        return None
    try:
        meta = json.loads((entry / "meta.json").read_text())
        if (
            meta.get("version") != PREPROCESS_VERSION
            or meta.get("image_size") != image_size
            or meta.get("ids") != [r.id for r in records]
        ):
            return None
        images = np.load(entry / "images.npy", allow_pickle=False)
        masks = np.load(entry / "masks.npy", allow_pickle=False)
        n = len(records)
        if images.shape != (n, image_size, image_size) or masks.shape != images.shape:
            return None
        return PreparedData(
            ids=meta["ids"],
            images=images,
            masks=masks,
            labels=np.asarray(meta["labels"], dtype=np.int64),
            original_sizes=[tuple(int(v) for v in row) for row in meta["original_sizes"]],
            records=list(records),
            image_size=image_size,
        )
    except Exception as exc:  # a damaged cache entry is rebuilt, never trusted
        log.warning("removing unreadable cache entry %s (%s)", entry, exc)
        shutil.rmtree(entry, ignore_errors=True)
        return None


# -------------------------------------------------------------------------------- prepare


def _decode_all(records: Sequence[SampleRecord], image_size: int, progress: bool) -> PreparedData:
    n, size = len(records), image_size
    images = np.empty((n, size, size), np.uint8)
    masks = np.empty((n, size, size), np.uint8)
    sizes: list[tuple[int, int]] = []
    problems: list[str] = []
    from busseg.console import progress_bar

    for i, record in enumerate(progress_bar(records, desc=f"decoding {n} images", unit="img", enabled=progress)):
        try:
            image, mask = read_sample(record)
        except DataError as exc:
            problems.append(f"{record.id}: {exc}")
            sizes.append((0, 0))
            continue
        sizes.append((int(image.shape[0]), int(image.shape[1])))
        images[i] = resize_image(image, size)
        masks[i] = resize_mask(mask, size)
    if problems:
        listed = "\n".join(f"  {p}" for p in problems[:MAX_LISTED])
        more = f"\n  ... and {len(problems) - MAX_LISTED} more" if len(problems) > MAX_LISTED else ""
        raise DataError(f"{len(problems)} of {n} samples cannot be read:\n{listed}{more}")
    return PreparedData(
        ids=[r.id for r in records],
        images=images,
        masks=masks,
        labels=np.array([r.class_index for r in records], dtype=np.int64),
        original_sizes=sizes,
        records=list(records),
        image_size=size,
    )


def prepare(
    records: Sequence[SampleRecord],
    image_size: int = 256,
    cache_dir: str | Path | None = None,
    progress: bool = True,
) -> PreparedData:
    """Decode, convert to grayscale and resize every record; cached on disk.

    Args:
        records: the samples, in the order the arrays will have.
        image_size: side of the square output.
        cache_dir: cache root (``default_cache_dir()`` when None); arrays go to
            ``<cache_dir>/prepared/``.
        progress: show a progress bar while decoding.

    Raises:
        DataError listing every unreadable sample (not only the first); ConfigError for an
        empty record list, duplicate ids or a bad size.
    """
    records = list(records)
    if not records:
        raise ConfigError("prepare: no records to prepare (is the dataset empty?)")
    if int(image_size) < 8:
        raise ConfigError(f"prepare: image_size={image_size} is too small")
    image_size = int(image_size)
    seen: set[str] = set()
    duplicates = sorted({r.id for r in records if r.id in seen or seen.add(r.id)})
    if duplicates:
        raise ConfigError(f"prepare: duplicate sample ids {duplicates[:10]}")

    folder = Path(cache_dir if cache_dir is not None else default_cache_dir()) / "prepared"
    start = time.perf_counter()
    stat_key = _stat_key(records, image_size)
    pointer = folder / f"stat-{stat_key}.txt"
    if pointer.is_file():
        content_key = pointer.read_text().strip()
        data = _load_cache(folder / content_key, records, image_size)
        if data is not None:
            log.debug("prepare: cache hit %s (%.2fs)", content_key, time.perf_counter() - start)
            return data
    content_key = _content_key(records, image_size)
    data = _load_cache(folder / content_key, records, image_size)
    if data is None:
        data = _decode_all(records, image_size, progress)
        try:
            _save_cache(folder / content_key, data)
        except OSError as exc:  # a read-only cache must not stop training
            log.warning("prepare: cannot write cache in %s (%s)", folder, exc)
            return data
        log.info("prepare: %d images decoded and cached in %.1fs", len(records), time.perf_counter() - start)
    try:
        atomic_write_bytes(pointer, content_key.encode())
    except OSError as exc:
        log.warning("prepare: cannot write cache pointer %s (%s)", pointer, exc)
    return data


# ---------------------------------------------------------------------------- normalisation


def normalize(images, mode: str):
    """Intensity normalisation, per image over its last two axes (rows, cols); float32.

    Accepts a numpy array or a torch tensor (``[H, W]``, ``[N, H, W]`` or ``[N, C, H, W]``)
    and returns the same kind.

    - ``"minmax"``: ``(x - min) / (max - min)`` to [0, 1]; a constant image gives 0.
    - ``"zscore"``: ``(x - mean) / std``; a constant image gives 0.
    - ``"imagenet"``: min-max to [0, 1], then ``(x - 0.449) / 0.226``, the ImageNet RGB
      mean/std averaged over the channels, for grayscale input to ImageNet-pretrained
      encoders. (Min-max rather than ``x / 255`` so that the result does not depend on the
      input's scale, uint8 or float.)
    """
    if mode not in NORMALIZATION_MODES:
        raise ConfigError(f"unknown normalization {mode!r}; choose one of {', '.join(NORMALIZATION_MODES)}")
    is_torch = type(images).__module__.startswith("torch")
    if is_torch:
        import torch

        x = images.to(torch.float32)
        if x.ndim < 2:
            raise ConfigError(f"normalize: expected an image array, got shape {tuple(x.shape)}")
        if mode == "zscore":
            mean = x.mean(dim=(-2, -1), keepdim=True)
            std = x.std(dim=(-2, -1), keepdim=True, unbiased=False)
            return torch.where(std > 1e-6, (x - mean) / std.clamp_min(1e-6), torch.zeros_like(x))
        lo = x.amin(dim=(-2, -1), keepdim=True)
        span = x.amax(dim=(-2, -1), keepdim=True) - lo
        out = torch.where(span > 0, (x - lo) / span.clamp_min(1e-12), torch.zeros_like(x))
    else:
        x = np.asarray(images, dtype=np.float32)
        if x.ndim < 2:
            raise ConfigError(f"normalize: expected an image array, got shape {x.shape}")
        if mode == "zscore":
            mean = x.mean(axis=(-2, -1), keepdims=True)
            std = x.std(axis=(-2, -1), keepdims=True)
            return np.where(std > 1e-6, (x - mean) / np.maximum(std, 1e-6), 0.0).astype(np.float32)
        lo = x.min(axis=(-2, -1), keepdims=True)
        span = x.max(axis=(-2, -1), keepdims=True) - lo
        out = np.where(span > 0, (x - lo) / np.maximum(span, 1e-12), 0.0).astype(np.float32)
    if mode == "imagenet":
        out = (out - IMAGENET_GRAY_MEAN) / IMAGENET_GRAY_STD
    return out


def model_input(pixels, normalization: str, in_channels: int = 1):
    """Grey images in [0, 1] ``[B, 1, H, W]`` (torch) -> the model's input ``[B, C, H, W]``:
    :func:`normalize` per image, then the grey channel repeated to ``in_channels``."""
    x = normalize(pixels, normalization)
    return x if in_channels == 1 else x.repeat(1, in_channels, 1, 1)
