"""STU (Shantou University breast ultrasound set, 42 images): ``<root>/Test_Image_N.png``.

Each image ``Test_Image_N.png`` has its mask ``mask_N.png`` in the same folder. The masks are
anti-aliased and not always stored at the image size: records carry
``extra["mask_resize"] = True`` so that :func:`busseg.data.imageio.read_mask` resizes them to
the image size and thresholds at half range instead of refusing them. No class labels.
"""

from __future__ import annotations

import re
from pathlib import Path

from busseg.data.adapters._common import LayoutProblems, list_image_files, require_dir
from busseg.data.records import SampleRecord
from busseg.errors import DataError

DEFAULT_SUBDIR = "STU"
LAYOUT = "<root>/Test_Image_N.png with masks <root>/mask_N.png"
_IMAGE_RE = re.compile(r"^Test_Image_(\d+)$", re.IGNORECASE)
_MASK_RE = re.compile(r"^mask_(\d+)$", re.IGNORECASE)


def load(root: str | Path, *, strict: bool = True) -> list[SampleRecord]:
    root = require_dir(Path(root), "STU", LAYOUT)
    problems = LayoutProblems("STU", root, strict)
    images: dict[int, Path] = {}
    masks: dict[int, Path] = {}
    for path in list_image_files(root):
        if m := _IMAGE_RE.match(path.stem):
            images[int(m[1])] = path
        elif m := _MASK_RE.match(path.stem):
            masks[int(m[1])] = path
    if not images and not masks:
        raise DataError(f"STU dataset at {root}: wrong layout, no Test_Image_N / mask_N files. Expected {LAYOUT}")
    for n in sorted(set(masks) - set(images)):
        problems.add(masks[n], f"mask without image (no Test_Image_{n}.png)")
    records = []
    for n, image_path in sorted(images.items()):
        if n not in masks:
            problems.add(image_path, f"image without mask (expected mask_{n}.png)")
            continue
        records.append(
            SampleRecord(
                id=f"stu_{n:03d}",
                image_path=image_path,
                mask_paths=(masks[n],),
                label="unknown",
                source="stu",
                extra={"mask_resize": True},
            )
        )
    problems.finish()
    return records
