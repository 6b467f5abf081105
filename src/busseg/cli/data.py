"""``busseg data``: audit a dataset, write leakage-free splits, generate phantoms."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from busseg.errors import ConfigError

_DATASET_HELP = (
    "dataset: phantom, busi, busbra, udiat, stu or folder (without --root, looked up under "
    "$BUSSEG_DATA_DIR; phantom is generated into the cache)"
)


def _add_dataset_args(parser: argparse.ArgumentParser) -> None:
    from busseg.data import DATASETS

    parser.add_argument("dataset", choices=DATASETS, metavar="DATASET", help=_DATASET_HELP)
    parser.add_argument("--root", type=Path, default=None, help="dataset folder (overrides $BUSSEG_DATA_DIR)")
    parser.add_argument(
        "--include-normal",
        action="store_true",
        help="keep images labelled normal (BUSI's lesion-free class; excluded by default)",
    )
    parser.add_argument(
        "--lenient",
        action="store_true",
        help="skip samples with layout problems (with a warning) instead of stopping",
    )


def _records(args):
    from busseg.data import load_records

    return load_records(args.dataset, args.root, include_normal=args.include_normal, strict=not args.lenient)


def _crop_search(args):
    from busseg.data.crop_duplicates import CropSearch

    return None if args.no_crop_search else CropSearch()


def _pair_figure(report, records, path: Path, n_pairs: int) -> Path | None:
    """Side-by-side PNG of the first ``n_pairs`` crop/zoom pairs of ``report`` that share no image."""
    from busseg.data import read_image
    from busseg.viz.duplicates import save_pair_figure

    by_id = {r.id: r for r in records}
    rows, shown = [], set()
    for match in report.crop_pairs:
        if len(rows) == n_pairs:
            break
        if match.a in shown or match.b in shown:
            continue  # one pair per group of images: more groups to check for the same space
        shown.update((match.a, match.b))
        image_a, image_b = read_image(by_id[match.a].image_path), read_image(by_id[match.b].image_path)
        b_in_a, a_in_b = match.outlines(image_a.shape, image_b.shape)
        rows.append({
            "image_a": image_a, "image_b": image_b, "outline_in_a": b_in_a, "outline_in_b": a_in_b,
            "name_a": f"{match.a} ({image_a.shape[1]}x{image_a.shape[0]})",
            "name_b": f"{match.b} ({image_b.shape[1]}x{image_b.shape[0]})",
            "caption": f"scale {match.scale:.3f}, rotation {match.rotation_deg:+.1f} deg, shift "
                       f"({match.shift[0]:+.0f}, {match.shift[1]:+.0f}) px, {match.inliers}/{match.matches} "
                       f"inliers, local agreement {match.agreement:.2f}: {match.kind}",
        })
    if not rows:
        return None
    return save_pair_figure(path, rows, title=f"{report.dataset}: crop/zoom/shift duplicates "
                                              f"(dashed: the other image's field of view)")


def _audit(args) -> int:
    from busseg.data import audit_dataset

    if args.figure_pairs < 1:
        raise ConfigError(f"--figure-pairs {args.figure_pairs}: at least one pair")
    records = _records(args)
    report = audit_dataset(
        records,
        near_duplicate_threshold=args.threshold,
        hash_size=args.hash_size,
        dataset=args.dataset,
        progress=True,
        crop_search=_crop_search(args),
    )
    print(report.to_text(max_items=args.max_items))
    if args.out is not None:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(report.to_json() + "\n")
        print(f"\nreport written to {args.out}")
    if args.figure is not None:
        written = _pair_figure(report, records, args.figure, args.figure_pairs)
        print(f"pair figure written to {written}" if written else "no crop/zoom pair to draw")
    return 0


def _split(args) -> int:
    from busseg.data import audit_dataset, import_busbra_folds, make_split, random_split, save_split

    if args.busbra_official is not None:
        if args.dataset != "busbra":
            raise ConfigError("--busbra-official only applies to the busbra dataset")
        from busseg.data import dataset_root

        split = import_busbra_folds(
            dataset_root("busbra", args.root), k=args.busbra_official, val_fraction=args.val_fraction, seed=args.seed
        )
    else:
        records = _records(args)
        if args.random:
            split = random_split(records, k=args.k, seed=args.seed, val_fraction=args.val_fraction, dataset=args.dataset)
        else:
            report = audit_dataset(records, near_duplicate_threshold=args.threshold, dataset=args.dataset,
                                   read_masks=False, progress=True, crop_search=_crop_search(args))
            print(
                f"audit: {len(report.clusters)} duplicate clusters ({report.n_clustered_images} images; "
                f"{len(report.crop_pairs)} crop/zoom pairs among them) kept inside one fold each"
            )
            split = make_split(
                records, k=args.k, seed=args.seed, val_fraction=args.val_fraction, groups=report.group_map(),
                dataset=args.dataset, grouping_method=report.grouping_method(),
            )
            split["audit"] = {"near_duplicate_threshold": args.threshold, "clusters": report.clusters,
                              "crop_pairs": [[m.a, m.b] for m in report.crop_pairs]}
    save_split(split, args.out)
    from busseg.data.splits import grouping_description

    print(f"{split['k']}-fold split of {split['n_samples']} images ({split['n_groups']} groups; grouping: "
          f"{grouping_description(split)})")
    for fold in split["folds"]:
        counts = ", ".join(f"{part} {len(fold[part])} {json.dumps(fold['counts'][part])}" for part in ("train", "val", "test"))
        print(f"  fold {fold['fold']}: {counts}")
    print(f"written to {args.out}")
    return 0


def _phantom(args) -> int:
    from busseg.data import write_phantom_dataset

    root = write_phantom_dataset(args.out, n=args.n, image_size=args.size, seed=args.seed)
    print(f"{args.n} phantoms of {args.size}x{args.size} px (seed {args.seed}) written to {root} (folder layout)")
    return 0


def register(subparsers) -> None:
    parser = subparsers.add_parser(
        "data",
        help="audit datasets, write splits, generate phantoms",
        description="Dataset tools: audit (duplicates, conflicts, broken files), leakage-free "
        "cross-validation splits, synthetic phantom datasets.",
    )
    sub = parser.add_subparsers(dest="data_command", metavar="SUBCOMMAND")
    sub.required = True

    audit = sub.add_parser(
        "audit",
        help="report counts, sizes, problems and duplicate clusters of a dataset",
        description="Read every image and mask once and report class counts, image sizes, "
        "unreadable files, empty/multiple/non-binary masks, exact duplicates (identical pixels), "
        "near-duplicate clusters (64-bit DCT hash) and crop/zoom/shift duplicates (SIFT features, "
        "confirmed by a RANSAC similarity fit), flagging clusters whose members carry different "
        "labels or masks.",
    )
    _add_dataset_args(audit)
    audit.add_argument("--threshold", type=int, default=6, help="max Hamming distance of near-duplicates (default 6 of 64 bits)")
    audit.add_argument("--hash-size", type=int, default=8, help="DCT hash side; the hash has hash_size^2 bits (default 8)")
    audit.add_argument("--max-items", type=int, default=20, help="items listed per section (default 20)")
    audit.add_argument("--out", type=Path, default=None, help="also write the full report as JSON")
    audit.add_argument("--figure", type=Path, default=None, metavar="PNG",
                       help="write a side-by-side figure of the first crop/zoom pairs, one per group of images "
                            "(to check them by eye)")
    audit.add_argument("--figure-pairs", type=int, default=6, metavar="N", help="pairs in --figure (default 6)")
    audit.add_argument("--no-crop-search", action="store_true",
                       help="hash clusters only: skip the crop/zoom/shift duplicate search (local features + RANSAC)")
    audit.set_defaults(func=_audit)

    split = sub.add_parser(
        "split",
        help="write a stratified, leakage-free k-fold split (JSON)",
        description="Write a k-fold split file. By default it is stratified by class and "
        "group-aware: patients and the audit's near-duplicate clusters stay inside one fold; each "
        "fold's validation set is carved from its training folds only.",
    )
    _add_dataset_args(split)
    split.add_argument("--k", type=int, default=5, help="number of folds (default 5)")
    split.add_argument("--seed", type=int, default=0, help="random seed (default 0)")
    split.add_argument("--val-fraction", type=float, default=0.1, help="share of each training pool used for validation (default 0.1)")
    split.add_argument("--threshold", type=int, default=6, help="near-duplicate Hamming threshold used for grouping (default 6)")
    split.add_argument("--no-crop-search", action="store_true",
                       help="group by hash clusters and patients only (older busseg's grouping; crop/zoom "
                            "duplicates of one scan may then straddle folds)")
    split.add_argument(
        "--random",
        action="store_true",
        help="image-level random split ignoring duplicates (leaky baseline for a leakage study only)",
    )
    split.add_argument(
        "--busbra-official",
        type=int,
        choices=(5, 10),
        default=None,
        metavar="K",
        help="import BUS-BRA's official K-fold partition (K = 5 or 10) instead of making one",
    )
    split.add_argument("--out", type=Path, required=True, help="split file to write (JSON)")
    split.set_defaults(func=_split)

    phantom = sub.add_parser(
        "phantom",
        help="generate a synthetic B-mode phantom dataset (folder layout)",
        description="Write deterministic synthetic breast-ultrasound phantoms with exact masks "
        "and benign/malignant labels as images/, masks/ and labels.csv.",
    )
    phantom.add_argument("--out", type=Path, required=True, help="output folder")
    phantom.add_argument("--n", type=int, default=200, help="number of images (default 200)")
    phantom.add_argument("--size", type=int, default=256, help="image side in pixels (default 256)")
    phantom.add_argument("--seed", type=int, default=0, help="random seed (default 0)")
    phantom.set_defaults(func=_phantom)
