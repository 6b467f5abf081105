"""BUSI (Al-Dhabyani et al., Data in Brief 28, 2020): ``<root>/{benign,malignant,normal}/``.

Layout: ``benign/benign (N).png`` with its mask ``benign (N)_mask.png`` and, for a few images,
extra masks ``benign (N)_mask_1.png``, ``_mask_2.png`` (one lesion per file; the lesion mask is
their union). ``normal/`` images have empty masks. Patient ids are not published, so records
carry no ``group_id``: the duplicate clusters found by :func:`busseg.data.audit.audit_dataset`
supply the groups of a leakage-free split.
"""

from __future__ import annotations

import re
from pathlib import Path

from busseg.data.adapters._common import LayoutProblems, list_image_files, require_dir
from busseg.data.records import SampleRecord
from busseg.errors import DataError

DEFAULT_SUBDIR = "BUSI/Dataset_BUSI_with_GT"
CLASSES = ("benign", "malignant", "normal")
LAYOUT = "<root>/{benign,malignant,normal}/<name>.png with masks <name>_mask.png (+ _mask_1...)"

_MASK_RE = re.compile(r"^(?P<stem>.+)_mask(?:_(?P<index>\d+))?$")


def load(root: str | Path, *, strict: bool = True) -> list[SampleRecord]:
    """Every BUSI image (normal included) as a SampleRecord; ids are file stems."""
    root = require_dir(Path(root), "BUSI", LAYOUT)
    present = [c for c in CLASSES if (root / c).is_dir()]
    if not any(c in present for c in ("benign", "malignant")):
        found = sorted(p.name for p in root.iterdir() if p.is_dir()) or ["no sub-folders"]
        raise DataError(
            f"BUSI dataset at {root}: wrong layout, no benign/ or malignant/ sub-folder "
            f"(found: {', '.join(found)}). Expected {LAYOUT}"
        )
    problems = LayoutProblems("BUSI", root, strict)
    records: list[SampleRecord] = []
    for label in present:
        folder = root / label
        images: dict[str, Path] = {}
        masks: dict[str, list[tuple[int, Path]]] = {}
        for path in list_image_files(folder):
            match = _MASK_RE.match(path.stem)
            if match:
                index = int(match["index"]) if match["index"] else 0
                masks.setdefault(match["stem"], []).append((index, path))
            elif path.stem in images:
                problems.add(path, f"two images share the id {path.stem!r} ({images[path.stem].name})")
            else:
                images[path.stem] = path
        for stem in sorted(set(masks) - set(images)):
            for _, mask_path in masks[stem]:
                problems.add(mask_path, f"mask without image (no {stem}.png in {folder})")
        for stem, image_path in sorted(images.items()):
            if stem not in masks:
                problems.add(image_path, f"image without mask (expected {stem}_mask.png)")
                continue
            mask_paths = tuple(p for _, p in sorted(masks[stem]))
            records.append(
                SampleRecord(
                    id=stem,
                    image_path=image_path,
                    mask_paths=mask_paths,
                    label=label,
                    group_id=None,
                    source="busi",
                )
            )
    if not records and not problems:
        raise DataError(f"BUSI dataset at {root}: no images found. Expected {LAYOUT}")
    problems.finish()
    bad = {Path(p) for p, _ in problems.items}
    return [r for r in records if r.image_path not in bad]
