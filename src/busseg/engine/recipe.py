"""Recipes: one YAML file per model holding its paper's training settings.

A recipe is loaded from ``busseg/recipes/<name>.yaml`` (or any path), checked field by field
(unknown fields and wrong types are a :class:`ConfigError` naming the file and the field),
and any field can be overridden with ``key=value`` strings (``optimizer.lr=3e-4``,
``augmentation.hflip=0.5``, ``epochs=2``); values are parsed as YAML. The ``augmentation``
section is checked by :func:`busseg.data.augment.resolve_augmentation` (``preset: robust``).
"""

from __future__ import annotations

import copy
import re
from importlib import resources
from pathlib import Path
from typing import Any

import yaml

from busseg.data.augment import resolve_augmentation
from busseg.errors import ConfigError

#: Every recipe field, its type(s) and default. Nested dicts are checked one level deep.
DEFAULTS: dict[str, Any] = {
    "paper": "",
    "model": None,
    "model_options": {},
    "encoder_weights": "none",
    "in_channels": 1,
    "image_size": 256,
    "normalization": "minmax",
    "epochs": 100,
    "batch_size": 8,
    "optimizer": {"name": "adam", "lr": 1e-3, "weight_decay": 0.0},
    "scheduler": {"name": "none"},
    "loss": {"name": "segmentation", "pixel": "bce_dice"},
    "augmentation": {},
    "validation": {"fraction": 0.2, "monitor": "val_dice", "mode": "max"},
    "early_stopping": None,
    "cv_folds": 5,
    "seed": 0,
    "include_normal": False,
    "postprocess": None,
    "notes": "",
}

FIELD_TYPES: dict[str, tuple[type, ...]] = {
    "paper": (str,),
    "model": (str,),
    "model_options": (dict,),
    "encoder_weights": (str,),
    "in_channels": (int,),
    "image_size": (int,),
    "normalization": (str,),
    "epochs": (int,),
    "batch_size": (int,),
    "optimizer": (dict,),
    "scheduler": (dict,),
    "loss": (dict,),
    "augmentation": (dict,),
    "validation": (dict,),
    "early_stopping": (dict, type(None)),
    "cv_folds": (int,),
    "seed": (int,),
    "include_normal": (bool,),
    "postprocess": (dict, type(None)),
    "notes": (str,),
}

OPTIMIZERS = ("adam", "adamw", "adamax", "sgd")
SCHEDULERS = ("none", "plateau", "poly", "cosine", "step")
NORMALIZATIONS = ("minmax", "zscore", "imagenet")


_NUMBER = re.compile(r"^[+-]?(\d+\.?\d*|\.\d+)[eE][+-]?\d+$")


def _coerce_numbers(value: Any) -> Any:
    """YAML 1.1 reads ``3e-4`` (no dot) as a string: turn such strings into floats."""
    if isinstance(value, str) and _NUMBER.match(value.strip()):
        return float(value)
    if isinstance(value, dict):
        return {k: _coerce_numbers(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_coerce_numbers(v) for v in value]
    return value


def recipes_dir() -> Path:
    return Path(str(resources.files("busseg") / "recipes"))


def list_recipes() -> list[str]:
    return sorted(p.stem for p in recipes_dir().glob("*.yaml"))


def _merge(base: dict, update: dict) -> dict:
    out = copy.deepcopy(base)
    for key, value in update.items():
        if isinstance(value, dict) and isinstance(out.get(key), dict) and key != "loss":
            out[key] = _merge(out[key], value)
        else:
            out[key] = copy.deepcopy(value)
    return out


def validate_recipe(recipe: dict, source: str = "<recipe>") -> dict:
    """Check fields and types; returns the recipe with defaults filled in."""
    if not isinstance(recipe, dict):
        raise ConfigError(f"{source}: a recipe must be a mapping of fields")
    unknown = sorted(set(recipe) - set(DEFAULTS))
    if unknown:
        raise ConfigError(f"{source}: unknown recipe field(s) {unknown}; known: {sorted(DEFAULTS)}")
    full = _merge(DEFAULTS, recipe)
    for key, types in FIELD_TYPES.items():
        value = full[key]
        if key == "model" and value is None:
            raise ConfigError(f"{source}: field 'model' is required")
        if isinstance(value, bool) and bool not in types:
            raise ConfigError(f"{source}: field {key!r} must be {types[0].__name__}, got a boolean")
        if float in types and isinstance(value, int):
            continue
        if not isinstance(value, types):
            names = " or ".join(t.__name__ for t in types)
            raise ConfigError(
                f"{source}: field {key!r} must be {names}, got {type(value).__name__} ({value!r})"
            )
    for key in ("epochs", "batch_size", "image_size", "cv_folds"):
        if full[key] < 1:
            raise ConfigError(f"{source}: field {key!r} must be >= 1, got {full[key]}")
    if full["in_channels"] not in (1, 3):
        raise ConfigError(f"{source}: in_channels must be 1 or 3, got {full['in_channels']}")
    if full["normalization"] not in NORMALIZATIONS:
        raise ConfigError(f"{source}: normalization must be one of {NORMALIZATIONS}")
    opt = full["optimizer"]
    if opt.get("name") not in OPTIMIZERS:
        raise ConfigError(f"{source}: optimizer.name must be one of {OPTIMIZERS}, got {opt.get('name')!r}")
    if not isinstance(opt.get("lr"), (int, float)) or isinstance(opt.get("lr"), bool) or opt["lr"] <= 0:
        raise ConfigError(f"{source}: optimizer.lr must be a positive number, got {opt.get('lr')!r}")
    if full["scheduler"].get("name", "none") not in SCHEDULERS:
        raise ConfigError(f"{source}: scheduler.name must be one of {SCHEDULERS}")
    if "name" not in full["loss"]:
        raise ConfigError(f"{source}: loss.name is required")
    # checked (and a preset expanded) by the augmentation module; the preset's name stays in
    # the recipe so that a saved recipe.yaml says which preset it came from
    preset = full["augmentation"].get("preset")
    resolved = resolve_augmentation(full["augmentation"], source)
    full["augmentation"] = {"preset": preset, **resolved} if preset else resolved
    val = full["validation"]
    if not 0 < float(val.get("fraction", 0.2)) < 1:
        raise ConfigError(f"{source}: validation.fraction must be in (0, 1)")
    if val.get("mode", "max") not in ("min", "max"):
        raise ConfigError(f"{source}: validation.mode must be 'min' or 'max'")
    return full


def load_recipe(name_or_path: str | Path) -> dict:
    """Load and validate a recipe by registered name (``elad_net``) or file path."""
    path = Path(name_or_path)
    if not path.suffix:
        path = recipes_dir() / f"{name_or_path}.yaml"
        if not path.is_file():
            raise ConfigError(f"unknown recipe {str(name_or_path)!r}; known: {', '.join(list_recipes())}")
    elif not path.is_file():
        raise ConfigError(f"recipe file {path} does not exist")
    try:
        data = yaml.safe_load(path.read_text()) or {}
    except yaml.YAMLError as exc:
        raise ConfigError(f"recipe file {path}: not valid YAML ({exc})") from exc
    return validate_recipe(_coerce_numbers(data), str(path))


def apply_overrides(recipe: dict, overrides: list[str] | None, source: str = "override") -> dict:
    """Apply ``key.sub=value`` overrides (values parsed as YAML) and re-validate."""
    out = copy.deepcopy(recipe)
    for item in overrides or []:
        if "=" not in item:
            raise ConfigError(f"{source} {item!r}: expected key=value (e.g. optimizer.lr=1e-4)")
        key, raw = item.split("=", 1)
        try:
            value = _coerce_numbers(yaml.safe_load(raw))
        except yaml.YAMLError as exc:
            raise ConfigError(f"{source} {item!r}: value is not valid YAML") from exc
        parts = key.strip().split(".")
        if parts[0] not in DEFAULTS:
            raise ConfigError(f"{source} {item!r}: unknown recipe field {parts[0]!r}")
        node = out
        for p in parts[:-1]:
            if node.get(p) is None:
                node[p] = {}
            if not isinstance(node[p], dict):
                raise ConfigError(f"{source} {item!r}: {p!r} is not a mapping")
            node = node[p]
        node[parts[-1]] = value
    return validate_recipe(out, source)


def save_recipe(recipe: dict, path: str | Path) -> None:
    from busseg.engine.io import atomic_write_text

    atomic_write_text(path, yaml.safe_dump(recipe, sort_keys=False))
