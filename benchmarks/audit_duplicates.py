"""What the audit's duplicate search costs, and how many pairs its candidate index misses.

    python benchmarks/audit_duplicates.py --dataset busi --root DATA/Dataset_BUSI_with_GT --include-normal
    python benchmarks/audit_duplicates.py ... --scale-to 2000        # BUS-BRA-sized set
    python benchmarks/audit_duplicates.py ... --all-pairs            # recall of the candidate index

Prints the audit's wall time split into reading + hashing, local features, candidate index and
geometric checks, the peak memory, the pairs found, and with ``--all-pairs`` the pairs that an
exhaustive geometric check of every pair finds (the expensive way the index avoids) and how many
of them the index proposed. ``--scale-to N`` adds mirrored copies of the images (left-right,
then up-down, then both; written as PNGs into ``--workdir``) until there are N images: a mirror
is no similarity transform of its source, so each copy is a new scan for the search, and the
duplicate structure of the data is repeated in each mirrored set.
"""

from __future__ import annotations

import argparse
import csv
import itertools
import resource
import sys
import time
from pathlib import Path

import numpy as np
from PIL import Image

from busseg.data import audit_dataset, load_records, read_image
from busseg.data.crop_duplicates import CropSearch, candidate_pairs, confirm_pair, extract_features

MIRRORS = (("lr", np.fliplr), ("ud", np.flipud), ("lrud", lambda a: np.flipud(np.fliplr(a))))


def scaled_copy(records, n: int, workdir: Path):
    """The records plus mirrored copies up to ``n`` images, as a folder-layout dataset."""
    if n > len(records) * (1 + len(MIRRORS)):
        sys.exit(f"--scale-to {n}: at most {len(records) * (1 + len(MIRRORS))} images from {len(records)}")
    (workdir / "images").mkdir(parents=True, exist_ok=True)
    (workdir / "masks").mkdir(parents=True, exist_ok=True)
    rows = []
    variants = [("", lambda a: a), *MIRRORS]
    for suffix, transform in variants:
        for record in records:
            if len(rows) == n:
                break
            name = f"{record.id}{'_' + suffix if suffix else ''}".replace(" ", "_").replace("(", "").replace(")", "")
            target = workdir / "images" / f"{name}.png"
            if not target.is_file():
                Image.fromarray(np.ascontiguousarray(transform(read_image(record.image_path)))).save(target)
                Image.fromarray(np.zeros((8, 8), np.uint8)).save(workdir / "masks" / f"{name}.png")
            rows.append((name, record.label))
    with open(workdir / "labels.csv", "w", newline="") as fh:
        csv.writer(fh).writerows([("id", "label"), *rows])
    return load_records("folder", workdir, include_normal=True, require_masks=False)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--dataset", default="busi")
    p.add_argument("--root", required=True)
    p.add_argument("--include-normal", action="store_true")
    p.add_argument("--scale-to", type=int, default=None, metavar="N")
    p.add_argument("--workdir", type=Path, default=Path("/tmp/busseg_audit_benchmark"))
    p.add_argument("--all-pairs", action="store_true", help="also check every pair geometrically (slow)")
    args = p.parse_args(argv)

    records = load_records(args.dataset, args.root, include_normal=args.include_normal)
    if args.scale_to:
        records = scaled_copy(records, args.scale_to, args.workdir)
    started = time.perf_counter()
    report = audit_dataset(records, read_masks=False)
    total = time.perf_counter() - started
    seconds = report.crop_search["seconds"]
    crop_total = sum(seconds.values())
    print(f"{len(records)} images ({args.dataset}{', scaled with mirrored copies' if args.scale_to else ''})")
    print(f"  audit wall time {total:.1f} s: reading + hashing {total - crop_total:.1f} s, local features "
          f"{seconds['features']:.1f} s, candidate index {seconds['index']:.1f} s, geometric checks "
          f"{seconds['verification']:.1f} s ({report.crop_search['n_verified']} candidate pairs, "
          f"{1000 * seconds['verification'] / max(report.crop_search['n_verified'], 1):.1f} ms each)")
    print(f"  peak memory {resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024:.0f} MiB")
    print(f"  hash clusters {len(report.hash_clusters)}, crop/zoom pairs {len(report.crop_pairs)}, clusters after "
          f"merging {len(report.clusters)} ({report.n_clustered_images} images)")
    if report.random_split_leakage:
        leak = report.random_split_leakage
        print(f"  random {leak['k']}-fold split: {leak['test_images']} test images ({leak['percent']:.1f} %) with a "
              f"duplicate in training, {leak['only_through_crop_pairs']} only through crop/zoom pairs")

    if args.all_pairs:
        settings = CropSearch()
        ids = [r.id for r in report_ids(records, report)]
        t0 = time.perf_counter()
        features = [extract_features(read_image(r.image_path), settings) for r in report_ids(records, report)]
        cluster_of = {i: k for k, c in enumerate(report.hash_clusters) for i in c}
        proposed = set(candidate_pairs(features, settings))
        found = []
        for i, j in itertools.combinations(range(len(ids)), 2):
            if ids[i] in cluster_of and cluster_of.get(ids[i]) == cluster_of.get(ids[j]):
                continue
            a, b = (i, j) if ids[i] <= ids[j] else (j, i)
            if confirm_pair(features[a], features[b], settings, (ids[a], ids[b])).confirmed:
                found.append((min(i, j), max(i, j)))
        elapsed = time.perf_counter() - t0
        missed = [(ids[i], ids[j]) for i, j in found if (i, j) not in proposed]
        print(f"  exhaustive check of all {len(ids) * (len(ids) - 1) // 2} pairs: {elapsed:.0f} s, {len(found)} pairs "
              f"confirmed; the candidate index proposed {len(found) - len(missed)} of them")
        for a, b in missed:
            print(f"    missed by the index: {a} ~ {b}")
    return 0


def report_ids(records, report):
    """The records the audit could read, in the audit's order."""
    readable = set(report.labels)
    return [r for r in records if r.id in readable]


if __name__ == "__main__":
    sys.exit(main())
