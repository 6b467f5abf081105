"""Options shared by the training and evaluation commands."""

from __future__ import annotations

import argparse

from busseg.data import DATASETS


def add_dataset_options(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group("data")
    g.add_argument("--dataset", default="phantom", choices=DATASETS,
                   help="dataset layout (default: the built-in phantom data)")
    g.add_argument("--root", default=None,
                   help="dataset folder (default: $BUSSEG_DATA_DIR/<dataset>; phantoms are generated)")
    g.add_argument("--n-phantoms", type=int, default=None, help="number of phantom images (phantom dataset)")
    g.add_argument("--include-normal", action="store_true", default=None,
                   help="keep images without a lesion (BUSI 'normal'); left out by default")


def data_options(args) -> dict:
    """Dataset options of the command line (``--n-phantoms``), refused where they cannot apply."""
    from pathlib import Path

    from busseg.errors import ConfigError

    n = getattr(args, "n_phantoms", None)
    if n is None:
        return {}
    if args.dataset != "phantom":
        raise ConfigError(f"--n-phantoms applies to the phantom dataset only, not --dataset {args.dataset}")
    if n < 1:
        raise ConfigError(f"--n-phantoms must be at least 1, got {n}")
    if args.root is not None and Path(args.root).exists():
        raise ConfigError(f"--n-phantoms: --root {args.root} already holds phantoms, which are used as they are "
                          "(write another set with `busseg data phantom`)")
    return {"n": n}


def parse_folds(text: str | None) -> list[int] | None:
    """``--folds 0,2`` as ``[0, 2]`` (None when not given)."""
    from busseg.errors import ConfigError

    if text is None:
        return None
    try:
        folds = [int(f) for f in text.split(",")]
    except ValueError:
        raise ConfigError(f"--folds {text!r}: expected comma-separated fold numbers, e.g. 0,2") from None
    if len(set(folds)) != len(folds):
        raise ConfigError(f"--folds {text!r}: a fold is named twice")
    return folds


def add_trainer_options(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group("hardware")
    g.add_argument("--accelerator", default="auto", help="auto | cpu | gpu (Lightning)")
    g.add_argument("--devices", default="1", help="number of devices (or 'auto'); >1 uses DDP")
    g.add_argument("--strategy", default="auto", help="Lightning strategy, e.g. ddp")
    g.add_argument("--precision", default=None,
                   help="Lightning precision (default: bf16-mixed on GPU, 32-true on CPU)")
    g.add_argument("--no-progress", action="store_true", help="hide the progress bar")


def trainer_options(args) -> dict:
    devices = args.devices if args.devices == "auto" else int(args.devices)
    return dict(accelerator=args.accelerator, devices=devices, strategy=args.strategy,
                precision=args.precision, progress=not args.no_progress)


def add_recipe_options(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group("recipe")
    g.add_argument("--model", required=False, help="registered model name (see `busseg models`)")
    g.add_argument("--recipe", default=None,
                   help="recipe name or YAML file (default: the model's own paper recipe)")
    g.add_argument("--encoder-weights", default=None, help="imagenet | none | FILE (overrides the recipe)")
    g.add_argument("--epochs", type=int, default=None, help="override the recipe's epochs")
    g.add_argument("--image-size", type=int, default=None, help="override the recipe's image size")
    g.add_argument("--batch-size", type=int, default=None, help="override the recipe's batch size")
    g.add_argument("--seed", type=int, default=None, help="override the recipe's seed")
    g.add_argument("--augmentation", default=None, choices=("paper", "robust"),
                   help="paper: the recipe's own augmentation (default); robust: replace it with the robust "
                        "preset (nnU-Net's pipeline + ultrasound speckle, depth gain, dynamic range, field of "
                        "view, elastic; busseg.data.augment.ROBUST_PRESET)")
    g.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                   help="override any recipe field, e.g. --set optimizer.lr=1e-4 (repeatable)")


def resolve_recipe(args) -> dict:
    from busseg.engine.recipe import apply_overrides, load_recipe
    from busseg.errors import ConfigError
    from busseg.models import model_info

    if args.recipe is None and args.model is None:
        raise ConfigError("give --model NAME (its paper recipe is used) or --recipe NAME|FILE")
    recipe = load_recipe(args.recipe or model_info(args.model).recipe)
    overrides = list(args.overrides)
    if args.model is not None and args.model != recipe["model"]:
        model_info(args.model)
        overrides.insert(0, f"model={args.model}")
    if getattr(args, "augmentation", None) == "robust":
        overrides.insert(0, "augmentation={preset: robust}")
    for field, value in (("encoder_weights", args.encoder_weights), ("epochs", args.epochs),
                         ("image_size", args.image_size), ("batch_size", args.batch_size),
                         ("seed", args.seed)):
        if value is not None:
            overrides.append(f"{field}={value}")
    if getattr(args, "include_normal", None):
        overrides.append("include_normal=true")
    recipe = apply_overrides(recipe, overrides, "command line")
    model_info(recipe["model"])
    return recipe
