"""BUS-BRA (Gómez-Flores et al., Medical Physics 2024): Brazilian breast ultrasound dataset.

Layout: ``<root>/Images/bus_0001-l.png``, ``<root>/Masks/mask_0001-l.png`` and
``<root>/bus_data.csv`` with columns ``ID, Case, Histology, Pathology, BIRADS, Device, Width,
Height, Side, BBOX``. ``ID`` is the image stem, ``Case`` the patient (the record's group, so a
patient never spans two folds), ``Pathology`` benign/malignant. The official cross-validation
partitions (``5-fold-cv.csv``, ``10-fold-cv.csv``) are read by
:func:`busseg.data.splits.import_busbra_folds`.
"""

from __future__ import annotations

from pathlib import Path

from busseg.data.adapters._common import (
    LayoutProblems,
    list_image_files,
    normalize_label,
    read_csv_rows,
    require_dir,
)
from busseg.data.records import SampleRecord
from busseg.errors import DataError

DEFAULT_SUBDIR = "BUS-BRA"
LAYOUT = "<root>/Images/bus_XXXX-s.png, <root>/Masks/mask_XXXX-s.png, <root>/bus_data.csv"
_EXTRA_COLUMNS = ("Histology", "BIRADS", "Device", "Side")


def mask_name(image_id: str) -> str:
    """``bus_0001-l`` -> ``mask_0001-l.png``."""
    stem = image_id[4:] if image_id.startswith("bus_") else image_id
    return f"mask_{stem}.png"


def load(root: str | Path, *, strict: bool = True) -> list[SampleRecord]:
    root = require_dir(Path(root), "BUS-BRA", LAYOUT)
    images_dir = require_dir(root / "Images", "BUS-BRA", LAYOUT)
    masks_dir = require_dir(root / "Masks", "BUS-BRA", LAYOUT)
    table = root / "bus_data.csv"
    if not table.is_file():
        raise DataError(
            f"BUS-BRA dataset: {table} not found; it gives the labels (Pathology) and the "
            "patients (Case) that keep a split leakage-free"
        )
    rows = read_csv_rows(table, ("ID", "Case", "Pathology"), "BUS-BRA")
    problems = LayoutProblems("BUS-BRA", root, strict)
    image_files = {p.stem: p for p in list_image_files(images_dir)}
    mask_files = {p.name: p for p in list_image_files(masks_dir)}
    records: list[SampleRecord] = []
    seen: set[str] = set()
    for line, row in enumerate(rows, start=2):
        image_id = row["ID"]
        where = f"{table} line {line}"
        if not image_id:
            problems.add(where, "empty ID")
            continue
        if image_id in seen:
            problems.add(where, f"ID {image_id!r} listed twice")
            continue
        seen.add(image_id)
        label = normalize_label(row["Pathology"])
        if label is None or label == "normal":
            problems.add(where, f"Pathology {row['Pathology']!r} is not benign/malignant")
            continue
        if not row["Case"]:
            problems.add(where, f"ID {image_id!r} has no Case (patient) number")
            continue
        image_path = image_files.get(image_id)
        if image_path is None:
            problems.add(images_dir / f"{image_id}.png", "image listed in bus_data.csv is missing")
            continue
        mask_path = mask_files.get(mask_name(image_id))
        if mask_path is None:
            problems.add(image_path, f"image without mask (expected {masks_dir / mask_name(image_id)})")
            continue
        records.append(
            SampleRecord(
                id=image_id,
                image_path=image_path,
                mask_paths=(mask_path,),
                label=label,
                group_id=f"case_{row['Case']}",
                source="busbra",
                extra={k: row[k] for k in _EXTRA_COLUMNS if k in row},
            )
        )
    for stem, path in sorted(image_files.items()):
        if stem not in seen:
            problems.add(path, "image not listed in bus_data.csv (no label, no patient)")
    expected_masks = {mask_name(i) for i in seen}
    for name, path in sorted(mask_files.items()):
        if name not in expected_masks:
            problems.add(path, "mask without image in bus_data.csv")
    if not records and not problems:
        raise DataError(f"BUS-BRA dataset at {root}: bus_data.csv lists no images")
    problems.finish()
    return records
