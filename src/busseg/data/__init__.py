"""busseg.data: datasets, phantoms, preprocessing cache, audit and leakage-free splits.

Typical use::

    from busseg.data import load_records, prepare, audit_dataset, make_split

    records = load_records("busi")                      # $BUSSEG_DATA_DIR/BUSI/Dataset_BUSI_with_GT
    report = audit_dataset(records)                     # duplicates, conflicts, broken files
    split = make_split(records, k=5, groups=report.group_map())   # duplicates stay in one fold
    data = prepare(records, image_size=256)             # cached uint8 arrays
"""

from __future__ import annotations

import logging
import os
from pathlib import Path

from busseg.data.adapters import ADAPTERS
from busseg.data.audit import AuditReport, audit_dataset
from busseg.data.imageio import DataWarning, read_image, read_mask, read_pixel_spacing, read_sample
from busseg.data.phantom import PhantomSet, make_phantoms, write_phantom_dataset
from busseg.data.preprocess import PreparedData, default_cache_dir, normalize, prepare
from busseg.data.records import CLASS_NAMES, SampleRecord
from busseg.data.splits import (
    fold_ids,
    import_busbra_folds,
    load_split,
    make_split,
    random_split,
    save_split,
)
from busseg.errors import ConfigError, DataError

log = logging.getLogger(__name__)

DATASETS = ("phantom", "busi", "busbra", "udiat", "stu", "folder")
DATA_DIR_ENV = "BUSSEG_DATA_DIR"

_PHANTOM_DEFAULTS = {"n": 200, "image_size": 256, "seed": 0}


def dataset_root(dataset: str, root: str | Path | None = None) -> Path:
    """The folder of ``dataset``: ``root`` if given, else ``$BUSSEG_DATA_DIR/<default subdir>``."""
    if dataset not in DATASETS:
        raise ConfigError(f"unknown dataset {dataset!r}; choose one of {', '.join(DATASETS)}")
    if root is not None:
        return Path(root).expanduser()
    subdir = getattr(ADAPTERS.get(dataset), "DEFAULT_SUBDIR", None)
    if subdir is None:
        raise ConfigError(f"dataset {dataset!r} needs a root folder (--root PATH)")
    base = os.environ.get(DATA_DIR_ENV)
    if not base:
        raise ConfigError(
            f"no root folder given for dataset {dataset!r} and ${DATA_DIR_ENV} is not set: pass "
            f"root=/path/to/{subdir} (CLI: --root) or set {DATA_DIR_ENV} to the folder holding {subdir}"
        )
    path = Path(base).expanduser() / subdir
    if not path.exists():
        raise DataError(f"dataset {dataset!r} not found at {path} (${DATA_DIR_ENV}={base}; expected sub-folder {subdir})")
    return path


def phantom_root(n: int, image_size: int, seed: int, cache_dir: Path | None = None) -> Path:
    cache = Path(cache_dir) if cache_dir is not None else default_cache_dir()
    return cache / "phantoms" / f"n{n}_s{image_size}_seed{seed}"


def _load_phantom(root: str | Path | None, options: dict, strict: bool) -> list[SampleRecord]:
    unknown = set(options) - set(_PHANTOM_DEFAULTS)
    if unknown:
        raise ConfigError(f"unknown phantom option(s) {sorted(unknown)}; allowed: n, image_size, seed")
    params = {key: int(options.get(key, default)) for key, default in _PHANTOM_DEFAULTS.items()}
    path = Path(root).expanduser() if root is not None else phantom_root(**params)
    if not (path / "PHANTOM").is_file():
        if path.exists() and any(path.iterdir()) and not (path / "images").is_dir():
            raise DataError(f"{path} exists and is not a phantom dataset")
        if not path.exists() or not (path / "images").is_dir():
            log.info("generating %d phantoms of %dpx (seed %d) in %s", params["n"], params["image_size"], params["seed"], path)
            write_phantom_dataset(path, **params)
    return ADAPTERS["folder"].load(path, strict=strict, source="phantom")


def load_records(
    dataset: str,
    root: str | Path | None = None,
    *,
    include_normal: bool = False,
    **options,
) -> list[SampleRecord]:
    """The samples of ``dataset`` (one of :data:`DATASETS`) as SampleRecords.

    Args:
        dataset: ``phantom``, ``busi``, ``busbra``, ``udiat``, ``stu`` or ``folder``.
        root: the dataset folder. None: ``phantom`` is generated (deterministically) into
            ``default_cache_dir()/phantoms/...`` on first use and reused; the others are looked
            up under ``$BUSSEG_DATA_DIR`` (``BUSI/Dataset_BUSI_with_GT``, ``BUS-BRA``,
            ``UDIAT``, ``STU``).
        include_normal: keep images labelled ``normal`` (BUSI's lesion-free class, empty
            masks); dropped by default because lesion segmentation metrics are undefined on
            them.
        options: ``strict`` (default True: layout problems raise one DataError listing them
            all; False: affected samples are skipped with a warning); phantom: ``n`` (200),
            ``image_size`` (256), ``seed`` (0); folder: ``require_masks`` (True).
    """
    if dataset not in DATASETS:
        raise ConfigError(f"unknown dataset {dataset!r}; choose one of {', '.join(DATASETS)}")
    strict = bool(options.pop("strict", True))
    if dataset == "phantom":
        records = _load_phantom(root, options, strict)
    else:
        allowed = {"require_masks"} if dataset == "folder" else set()
        unknown = set(options) - allowed
        if unknown:
            raise ConfigError(f"unknown option(s) {sorted(unknown)} for dataset {dataset!r}")
        records = ADAPTERS[dataset].load(dataset_root(dataset, root), strict=strict, **options)
    if not include_normal:
        records = [r for r in records if r.label != "normal"]
    if not records:
        raise DataError(f"dataset {dataset!r}: no samples left" + ("" if include_normal else " (normal images excluded)"))
    return records


__all__ = [
    "CLASS_NAMES",
    "DATASETS",
    "AuditReport",
    "DataWarning",
    "PhantomSet",
    "PreparedData",
    "SampleRecord",
    "audit_dataset",
    "dataset_root",
    "default_cache_dir",
    "fold_ids",
    "import_busbra_folds",
    "load_records",
    "load_split",
    "make_phantoms",
    "make_split",
    "normalize",
    "prepare",
    "random_split",
    "read_image",
    "read_mask",
    "read_pixel_spacing",
    "read_sample",
    "save_split",
    "write_phantom_dataset",
]
