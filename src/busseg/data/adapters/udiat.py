"""UDIAT Dataset B (Yap et al., IEEE JBHI 2018): ``<root>/original/`` + ``<root>/GT/``.

Images ``original/000001.png`` and ground truth ``GT/000001.png`` share file names. The class
comes from column ``Type`` of ``<root>/DatasetB.xlsx`` when the workbook is present (read with
openpyxl; the image is identified by the first column whose header contains "image", or the
first column, matched on its number); without the workbook every label is ``unknown``. Patient
ids are not published: each image is its own group.
"""

from __future__ import annotations

import re
import warnings
from pathlib import Path

from busseg.data.adapters._common import LayoutProblems, list_image_files, normalize_label, require_dir
from busseg.data.imageio import DataWarning
from busseg.data.records import SampleRecord
from busseg.errors import DataError

DEFAULT_SUBDIR = "UDIAT"
LAYOUT = "<root>/original/<name>.png and <root>/GT/<name>.png (+ optional DatasetB.xlsx)"


def _number(value) -> int | None:
    digits = re.findall(r"\d+", str(value))
    return int(digits[-1]) if digits else None


def _read_types(path: Path) -> dict[int, str]:
    """Image number -> raw ``Type`` value from the workbook."""
    try:
        import openpyxl

        workbook = openpyxl.load_workbook(path, read_only=True, data_only=True)
    except Exception as exc:
        raise DataError(f"UDIAT dataset: cannot read {path} ({type(exc).__name__}: {exc})") from None
    try:
        rows = list(workbook.worksheets[0].iter_rows(values_only=True))
    finally:
        workbook.close()
    if not rows:
        raise DataError(f"UDIAT dataset: {path} is empty")
    header = [str(h).strip() if h is not None else "" for h in rows[0]]
    lowered = [h.lower() for h in header]
    if "type" not in lowered:
        raise DataError(f"UDIAT dataset: {path} has no 'Type' column (found: {', '.join(header)})")
    type_col = lowered.index("type")
    id_col = next((i for i, h in enumerate(lowered) if "image" in h), 0)
    types: dict[int, str] = {}
    for row in rows[1:]:
        if row is None or len(row) <= max(type_col, id_col) or row[id_col] is None:
            continue
        number = _number(row[id_col])
        if number is not None:
            types[number] = "" if row[type_col] is None else str(row[type_col])
    return types


def load(root: str | Path, *, strict: bool = True) -> list[SampleRecord]:
    root = require_dir(Path(root), "UDIAT", LAYOUT)
    images_dir = require_dir(root / "original", "UDIAT", LAYOUT)
    masks_dir = require_dir(root / "GT", "UDIAT", LAYOUT)
    workbook = root / "DatasetB.xlsx"
    types = _read_types(workbook) if workbook.is_file() else None
    if types is None:
        warnings.warn(
            f"UDIAT dataset: {workbook} not found; labels are 'unknown' (segmentation only)",
            DataWarning,
            stacklevel=2,
        )
    problems = LayoutProblems("UDIAT", root, strict)
    images = {p.stem: p for p in list_image_files(images_dir)}
    masks = {p.stem: p for p in list_image_files(masks_dir)}
    for stem in sorted(set(masks) - set(images)):
        problems.add(masks[stem], f"mask without image (no {stem}.* in {images_dir})")
    records = []
    for stem, image_path in sorted(images.items()):
        if stem not in masks:
            problems.add(image_path, f"image without mask (expected {masks_dir / image_path.name})")
            continue
        label = "unknown"
        if types is not None:
            raw = types.get(_number(stem)) if _number(stem) is not None else None
            if raw is None:
                problems.add(image_path, f"not listed in {workbook.name}")
                continue
            label = normalize_label(raw) or ""
            if label not in ("benign", "malignant"):
                problems.add(image_path, f"{workbook.name}: Type {raw!r} is not benign/malignant")
                continue
        records.append(
            SampleRecord(id=stem, image_path=image_path, mask_paths=(masks[stem],), label=label, source="udiat")
        )
    if not records and not problems:
        raise DataError(f"UDIAT dataset at {root}: no images in {images_dir}")
    problems.finish()
    return records
