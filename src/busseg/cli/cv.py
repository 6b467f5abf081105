"""``busseg cv``: cross-validation over every fold of a saved split."""

from __future__ import annotations

from busseg.cli._common import (add_dataset_options, add_recipe_options, add_trainer_options,
                                data_options, parse_folds, resolve_recipe, trainer_options)


def register(sub) -> None:
    p = sub.add_parser("cv", help="cross-validate a model over all folds of a split",
                       description="Train and test every fold of a split (saved file, or a new "
                                   "group-aware split with the recipe's fold count), then report "
                                   "per-fold metrics and mean ± std across folds.")
    add_recipe_options(p)
    add_dataset_options(p)
    p.add_argument("--split", default=None, help="split JSON file (default: a new group-aware split)")
    p.add_argument("--folds", default=None, help="comma-separated subset of folds, e.g. 0,1")
    p.add_argument("--out", required=True, help="cross-validation directory (fold_k sub-directories)")
    again = p.add_mutually_exclusive_group()
    again.add_argument("--resume", action="store_true",
                       help="continue interrupted folds (finished folds are reused when their recipe, data and "
                            "split are the same; anything else is refused)")
    again.add_argument("--overwrite", action="store_true",
                       help="train the folds again, discarding the runs (and split.json) already in --out")
    add_trainer_options(p)
    p.set_defaults(func=run)


def format_cv(cv: dict) -> str:
    from busseg.metrics.aggregate import format_mean_std

    lines = [f"{cv['model']}: {len(cv['folds'])} folds, {cv['n_images']} test images ({cv['aggregation']})"]
    for key, title in (("segmentation", "segmentation"), ("segmentation_postprocessed", "post-processed")):
        if key in cv:
            parts = [f"{m} {format_mean_std(v['mean'], v['std'])}" for m, v in cv[key].items()
                     if m in ("dice", "iou", "precision", "recall", "specificity")]
            parts += [f"{m} {format_mean_std(v['mean'], v['std'], scale=1)} px" for m, v in cv[key].items()
                      if m in ("hd95", "asd")]
            lines.append(f"  {title}: " + ", ".join(parts))
    for label, block in cv.get("by_class", {}).items():
        lines.append(f"  {label}: Dice {format_mean_std(block['dice']['mean'], block['dice']['std'])}")
    if "classification" in cv:
        c = cv["classification"]
        lines.append("  classification: " + ", ".join(
            f"{k} {format_mean_std(c[k]['mean'], c[k]['std'])}" for k in ("accuracy", "precision", "recall", "f1", "auc") if k in c))
    return "\n".join(lines)


def run(args) -> int:
    from busseg.engine.train import cross_validate

    folds = parse_folds(args.folds)
    recipe = resolve_recipe(args)
    cv = cross_validate(recipe, args.out, dataset=args.dataset, root=args.root, split=args.split, folds=folds,
                        data_options=data_options(args), resume=args.resume, overwrite=args.overwrite,
                        **trainer_options(args))
    if cv:
        print(format_cv(cv))
    return 0
