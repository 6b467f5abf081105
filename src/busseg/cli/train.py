"""``busseg train``: train one fold of a split."""

from __future__ import annotations

import json

from busseg.cli._common import (add_dataset_options, add_recipe_options, add_trainer_options,
                                data_options, resolve_recipe, trainer_options)


def register(sub) -> None:
    p = sub.add_parser("train", help="train a model on one fold of a split",
                       description="Train a registered model with its paper recipe (or another) on one "
                                   "fold of a split; the model is selected on a validation subset of "
                                   "the training folds and tested on the fold's test images.")
    add_recipe_options(p)
    add_dataset_options(p)
    p.add_argument("--split", default=None, help="split JSON file (default: a new group-aware split)")
    p.add_argument("--fold", type=int, default=0, help="fold of the split to train (default 0)")
    p.add_argument("--out", required=True, help="run directory")
    again = p.add_mutually_exclusive_group()
    again.add_argument("--resume", action="store_true",
                       help="continue an interrupted run from its last checkpoint (same recipe, data and split; a "
                            "finished run is reported, never extended)")
    again.add_argument("--overwrite", action="store_true", help="discard the run already in --out and train again")
    add_trainer_options(p)
    p.set_defaults(func=run)


def run(args) -> int:
    from busseg.engine.train import train_fold

    recipe = resolve_recipe(args)
    result = train_fold(recipe, args.out, dataset=args.dataset, root=args.root, split=args.split,
                        fold=args.fold, data_options=data_options(args), resume=args.resume,
                        overwrite=args.overwrite, **trainer_options(args))
    if result:
        seg = result.get("test", {}).get("segmentation")
        if seg:
            print(f"{recipe['model']} fold {args.fold}: test Dice {seg['dice_mean']:.4f} ± {seg['dice_std']:.4f} "
                  f"(n={seg['n']}); run in {args.out}")
        else:
            print(json.dumps(result, indent=2, default=str))
    return 0
