"""A plain folder of the user's own data: ``<root>/images/`` + ``<root>/masks/``.

Masks are matched to images by file stem: ``masks/<stem>.*``, ``masks/<stem>_mask.*`` and
extra masks ``masks/<stem>_mask_N.*`` (all unioned). An optional ``<root>/labels.csv`` with
columns ``id,label`` (and optionally ``group``, a patient id) gives classes
(benign/malignant/normal/unknown) and groups; without it labels are ``unknown`` and every image
is its own group. The phantom generator writes this layout too.
"""

from __future__ import annotations

import re
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

DEFAULT_SUBDIR = None
LAYOUT = "<root>/images/<stem>.png, <root>/masks/<stem>.png or <stem>_mask.png, optional <root>/labels.csv (id,label[,group])"
_MASK_RE = re.compile(r"^(?P<stem>.+?)(?:_mask(?:_(?P<index>\d+))?)?$")


def load(
    root: str | Path, *, strict: bool = True, require_masks: bool = True, source: str = "folder"
) -> list[SampleRecord]:
    """Records of a folder dataset.

    Args:
        require_masks: when False, images without a mask are kept with no mask file (for
            scans to predict on); the ``masks/`` folder may then be absent.
        source: the records' ``source`` (``"phantom"`` for generated phantoms).
    """
    root = require_dir(Path(root), "folder", LAYOUT)
    images_dir = require_dir(root / "images", "folder", LAYOUT)
    masks_dir = root / "masks"
    if require_masks:
        require_dir(masks_dir, "folder", LAYOUT)
    problems = LayoutProblems("folder", root, strict)
    images: dict[str, Path] = {}
    for path in list_image_files(images_dir):
        if path.stem in images:
            problems.add(path, f"two images share the id {path.stem!r} ({images[path.stem].name})")
        else:
            images[path.stem] = path
    if not images:
        raise DataError(f"folder dataset at {root}: {images_dir} holds no images ({LAYOUT})")
    masks: dict[str, list[tuple[int, Path]]] = {}
    if masks_dir.is_dir():
        for path in list_image_files(masks_dir):
            stem = path.stem
            if stem in images:  # same stem as an image: its (only) mask
                masks.setdefault(stem, []).append((0, path))
                continue
            match = _MASK_RE.match(stem)
            base = match["stem"] if match else stem
            if base not in images:
                problems.add(path, f"mask without image (no {base}.* in {images_dir})")
                continue
            index = int(match["index"]) + 1 if match and match["index"] else 0
            masks.setdefault(base, []).append((index, path))

    labels: dict[str, str] = {}
    groups: dict[str, str] = {}
    table = root / "labels.csv"
    if table.is_file():
        for line, row in enumerate(read_csv_rows(table, ("id", "label"), "folder"), start=2):
            label = normalize_label(row["label"])
            if label is None:
                problems.add(f"{table} line {line}", f"label {row['label']!r} is not one of benign/malignant/normal/unknown")
                continue
            if row["id"] not in images:
                problems.add(f"{table} line {line}", f"id {row['id']!r} has no image in {images_dir}")
                continue
            labels[row["id"]] = label
            if row.get("group"):
                groups[row["id"]] = row["group"]

    records = []
    for stem, image_path in sorted(images.items()):
        found = masks.get(stem, [])
        if not found and require_masks:
            problems.add(image_path, f"image without mask (expected {masks_dir}/{stem}.png or {stem}_mask.png)")
            continue
        indices = [i for i, _ in found]
        if len(set(indices)) != len(indices):
            problems.add(image_path, "ambiguous masks: " + ", ".join(p.name for _, p in sorted(found)))
            continue
        records.append(
            SampleRecord(
                id=stem,
                image_path=image_path,
                mask_paths=tuple(p for _, p in sorted(found)),
                label=labels.get(stem, "unknown"),
                group_id=groups.get(stem),
                source=source,
            )
        )
    problems.finish()
    return records
