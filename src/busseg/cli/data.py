"""``busseg data``: audit a dataset, write leakage-free splits, generate phantoms."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from busseg.errors import ConfigError
from busseg.fileio import atomic_write_text, prepare_output_dir, prepare_output_file

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
        help="skip samples with layout problems (with a warning) instead of stopping; split: also leave out "
        "the images the audit flags (recorded under 'excluded' in the split file)",
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

    if args.max_items < 0:
        raise ConfigError(f"--max-items must be >= 0, got {args.max_items}")
    if args.out is not None:
        prepare_output_file(args.out)
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
        atomic_write_text(args.out, report.to_json() + "\n")
        print(f"\nreport written to {args.out}")
    if args.figure is not None:
        written = _pair_figure(report, records, args.figure, args.figure_pairs)
        print(f"pair figure written to {written}" if written else "no crop/zoom pair to draw")
    if report.problems:
        print(f"\n{len(report.problems)} problem(s) in {len(report.flagged)} image(s): exit status 1. "
              "`busseg data split` refuses these images (--lenient leaves them out).")
        return 1
    return 0


def _val_fraction(args) -> float:
    """``--val-fraction``, else the validation.fraction of ``--recipe``, else the recipes'
    default: the recipe is the one source of truth, and an explicit fraction that contradicts
    a given recipe is warned about (runs with that recipe will use the split's fraction)."""
    import logging

    from busseg.engine.recipe import DEFAULTS, load_recipe

    recipe = load_recipe(args.recipe)["validation"]["fraction"] if args.recipe else None
    if args.val_fraction is None:
        return float(recipe if recipe is not None else DEFAULTS["validation"]["fraction"])
    if recipe is not None and abs(args.val_fraction - recipe) > 1e-9:
        logging.getLogger("busseg").warning(
            "--val-fraction %g differs from the validation.fraction %g of recipe %s; the split is written with "
            "%g, and runs of that recipe on this split validate on the split's images", args.val_fraction, recipe,
            args.recipe, args.val_fraction)
    return float(args.val_fraction)


def _usable_records(records, report, lenient: bool):
    """The records a split may use: none the audit flags, unless ``lenient`` leaves them out."""
    from busseg.data.adapters._common import MAX_LISTED
    from busseg.errors import DataError

    if not report.flagged:
        return records
    lines = [f"  {problem}" for problems in report.flagged.values() for problem in problems]
    listed = "\n".join(lines[:MAX_LISTED])
    if len(lines) > MAX_LISTED:
        listed += f"\n  ... and {len(lines) - MAX_LISTED} more"
    if not lenient:
        raise DataError(
            f"{len(report.flagged)} image(s) have problems the audit reports; a split would hand them to training:\n"
            f"{listed}\nfix or remove them (`busseg data audit` lists every problem), or pass --lenient to leave "
            "them out of the split")
    print(f"leaving {len(report.flagged)} flagged image(s) out of the split (--lenient):\n{listed}")
    return [r for r in records if r.id not in report.flagged]


def _refuse_unused_split_options(args) -> None:
    if args.busbra_official is not None:
        for option, given in (("--k", args.k is not None), ("--threshold", args.threshold is not None),
                              ("--random", args.random), ("--include-normal", args.include_normal),
                              ("--lenient", args.lenient), ("--no-crop-search", args.no_crop_search)):
            if given:
                raise ConfigError(f"{option} has no effect with --busbra-official (the official partition fixes "
                                  "the folds and the images)")
    elif args.random and args.threshold is not None:
        raise ConfigError("--threshold groups near-duplicates, which --random deliberately ignores")
    elif args.random and args.no_crop_search:
        raise ConfigError("--no-crop-search changes how duplicates are grouped, which --random deliberately ignores")


def _split(args) -> int:
    from busseg.data import audit_dataset, import_busbra_folds, make_split, random_split, save_split

    _refuse_unused_split_options(args)
    args.val_fraction = _val_fraction(args)
    if args.busbra_official is not None and args.dataset != "busbra":
        raise ConfigError("--busbra-official only applies to the busbra dataset")
    prepare_output_file(args.out)
    k = 5 if args.k is None else args.k
    threshold = 6 if args.threshold is None else args.threshold
    records = _records(args)
    # every split reads every image and mask once: files the audit flags never reach a split
    # the crop/zoom search (about 100 s on BUSI) only matters to a group-aware split
    grouped = not args.random and args.busbra_official is None
    report = audit_dataset(records, near_duplicate_threshold=threshold, dataset=args.dataset, progress=True,
                           crop_search=_crop_search(args) if grouped else None)
    if args.busbra_official is not None:
        _usable_records(records, report, lenient=False)
        from busseg.data import dataset_root

        split = import_busbra_folds(
            dataset_root("busbra", args.root), k=args.busbra_official, val_fraction=args.val_fraction, seed=args.seed
        )
    else:
        usable = _usable_records(records, report, args.lenient)
        if args.random:
            split = random_split(usable, k=k, seed=args.seed, val_fraction=args.val_fraction, dataset=args.dataset)
        else:
            print(
                f"audit: {len(report.clusters)} duplicate clusters ({report.n_clustered_images} images; "
                f"{len(report.crop_pairs)} crop/zoom pairs among them) kept inside one fold each"
            )
            split = make_split(
                usable, k=k, seed=args.seed, val_fraction=args.val_fraction, groups=report.group_map(),
                dataset=args.dataset, grouping_method=report.grouping_method(),
            )
            split["audit"] = {"near_duplicate_threshold": threshold, "clusters": report.clusters,
                              "crop_pairs": [[m.a, m.b] for m in report.crop_pairs]}
        if len(usable) < len(records):
            split["excluded"] = {i: report.flagged[i] for i in sorted(report.flagged)}
    save_split(split, args.out)
    from busseg.data.splits import grouping_description

    carved = "" if split.get("val_fraction") is None else f", validation fraction {split['val_fraction']:g}"
    print(f"{split['k']}-fold split of {split['n_samples']} images ({split['n_groups']} groups; grouping: "
          f"{grouping_description(split)}{carved})")
    for fold in split["folds"]:
        counts = ", ".join(f"{part} {len(fold[part])} {json.dumps(fold['counts'][part])}" for part in ("train", "val", "test"))
        print(f"  fold {fold['fold']}: {counts}")
    print(f"written to {args.out}")
    return 0


def _phantom(args) -> int:
    from busseg.data import write_phantom_dataset

    if args.out.exists() and not args.out.is_dir():
        raise ConfigError(f"--out {args.out}: is a file, not a folder")
    prepare_output_dir(args.out.parent, f"--out {args.out}: its folder")  # the dataset folder appears whole

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
        "labels or masks. Exit status: 0 when no file has a problem, 1 when some have (they "
        "are listed; `data split` refuses them), 2 on an error. Duplicate clusters and label conflicts "
        "are findings, not problems: `data split` keeps each cluster inside one fold.",
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
        "fold's validation set is carved from its training folds only. Every image and mask is read "
        "first: images the audit flags (unreadable, size mismatch, non-binary or empty masks...) are "
        "refused, or left out with --lenient.",
    )
    _add_dataset_args(split)
    split.add_argument("--k", type=int, default=None, help="number of folds (default 5)")
    split.add_argument("--seed", type=int, default=0, help="random seed (default 0)")
    split.add_argument("--val-fraction", type=float, default=None,
                       help="share of each training pool used for validation (default: the validation.fraction "
                            "of --recipe, else the recipes' default 0.2)")
    split.add_argument("--recipe", default=None, metavar="NAME|FILE",
                       help="take the validation fraction from this recipe (e.g. the one the runs will use)")
    split.add_argument("--threshold", type=int, default=None, help="near-duplicate Hamming threshold used for grouping (default 6)")
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
