"""Write a resized copy of any supported dataset in busseg's plain folder layout.

    python scripts/resized_copy.py busi /path/to/Dataset_BUSI_with_GT out/busi256 --size 256

``out/images/<id>.png``, ``out/masks/<id>.png`` (union of all masks) and ``out/labels.csv``
(``id,label,group``) where ``group`` is the patient id or, for datasets without one (BUSI), the
audit's duplicate cluster, so that a split made from the copy stays leakage-free. Useful to
move a dataset to a training machine (the copy is a fraction of the original size). Never
commit such a copy: datasets keep their own licences.
"""

from __future__ import annotations

import argparse
import csv
import sys
from pathlib import Path

import numpy as np
from PIL import Image

from busseg.data import load_records
from busseg.data.audit import audit_dataset
from busseg.data.preprocess import prepare


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("dataset")
    p.add_argument("root")
    p.add_argument("out")
    p.add_argument("--size", type=int, default=256)
    p.add_argument("--include-normal", action="store_true")
    args = p.parse_args(argv)
    records = load_records(args.dataset, args.root, include_normal=args.include_normal)
    groups = audit_dataset(records, read_masks=False).group_map()
    prepared = prepare(records, image_size=args.size)
    out = Path(args.out)
    (out / "images").mkdir(parents=True, exist_ok=True)
    (out / "masks").mkdir(parents=True, exist_ok=True)
    rows = []
    for i, rec in enumerate(prepared.records):
        Image.fromarray(prepared.images[i]).save(out / "images" / f"{rec.id}.png", optimize=True)
        Image.fromarray((prepared.masks[i] > 0).astype(np.uint8) * 255).save(out / "masks" / f"{rec.id}.png", optimize=True)
        rows.append({"id": rec.id, "label": rec.label, "group": groups.get(rec.id, rec.group)})
    with open(out / "labels.csv", "w", newline="") as fh:
        writer = csv.DictWriter(fh, fieldnames=["id", "label", "group"])
        writer.writeheader()
        writer.writerows(rows)
    print(f"{len(rows)} images written to {out} ({len(set(r['group'] for r in rows))} groups)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
