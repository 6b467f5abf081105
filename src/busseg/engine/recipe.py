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
from typing import Any, Callable

import yaml

from busseg.data.augment import resolve_augmentation
from busseg.data.splits import DEFAULT_VAL_FRACTION
from busseg.errors import ConfigError
from busseg.schema import NON_NEGATIVE, POSITIVE, PROBABILITY, boolean, check_section, choice, number, pair

#: Every recipe field, its type(s) and default. Nested sections are checked key by key against
#: the schemas below (unknown keys and out-of-range values are refused).
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
    "validation": {"fraction": DEFAULT_VAL_FRACTION, "monitor": "val_dice", "mode": "max"},
    "early_stopping": None,
    "cv_folds": 5,
    "seed": 0,
    "include_normal": False,
    "postprocess": None,
    # re-estimate BatchNorm statistics over training batches before validation and testing
    # (busseg.engine.batchnorm): None = off, {batches: N} = average over N batches (null: all)
    "precise_bn": None,
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
    "precise_bn": (dict, type(None)),
    "notes": (str,),
}

OPTIMIZERS = ("adam", "adamw", "adamax", "sgd")
SCHEDULERS = ("none", "plateau", "poly", "cosine", "step")
NORMALIZATIONS = ("minmax", "zscore", "imagenet")
#: Metrics logged every epoch that model selection, early stopping and ReduceLROnPlateau may watch.
MONITORS = ("val_loss", "val_dice", "val_iou", "val_acc")
MAX_IMAGE_SIZE = 4096


# ------------------------------------------------------------------ nested-field schemas
#
# A schema maps each allowed key of a nested recipe section to a check: a function returning
# None when the value is acceptable, else what is wrong with it. A key missing from a schema
# is refused (an option the code would silently ignore is a typo or a misunderstanding).


_ADAM = {"lr": POSITIVE, "weight_decay": NON_NEGATIVE, "betas": pair(number(0, 1, hi_open=True), ordered=False),
         "eps": POSITIVE}
#: Options of each optimizer (``torch.optim`` keyword arguments) besides ``name``.
OPTIMIZER_SCHEMAS: dict[str, dict[str, Callable]] = {
    "adam": {**_ADAM, "amsgrad": boolean},
    "adamw": {**_ADAM, "amsgrad": boolean},
    "adamax": dict(_ADAM),
    "sgd": {"lr": POSITIVE, "weight_decay": NON_NEGATIVE, "momentum": number(0, 1, hi_open=True),
            "dampening": PROBABILITY, "nesterov": boolean},
}
#: Options of each learning-rate schedule (see ``SegmentationTask.configure_optimizers``).
SCHEDULER_SCHEMAS: dict[str, dict[str, Callable]] = {
    "none": {},
    "plateau": {"factor": number(0, 1, lo_open=True, hi_open=True), "patience": number(0, integer=True),
                "monitor": choice(*MONITORS, "train_loss"), "mode": choice("min", "max"),
                "threshold": NON_NEGATIVE, "threshold_mode": choice("rel", "abs"),
                "cooldown": number(0, integer=True), "min_lr": NON_NEGATIVE, "eps": NON_NEGATIVE},
    "poly": {"power": POSITIVE},
    "cosine": {"eta_min": NON_NEGATIVE},
    "step": {"step_size": number(1, integer=True), "gamma": number(0, 1, lo_open=True)},
}
VALIDATION_SCHEMA: dict[str, Callable] = {
    "fraction": number(0, 1, lo_open=True, hi_open=True),
    "monitor": choice(*MONITORS),
    "mode": choice("min", "max"),
}
#: Early stopping (Lightning ``EarlyStopping``): what ``train_fold`` passes on.
EARLY_STOPPING_SCHEMA: dict[str, Callable] = {
    "patience": number(1, integer=True),
    "monitor": choice(*MONITORS),
    "mode": choice("min", "max"),
}

_POSITIVE_INTEGER = number(1, integer=True)
#: Precise BatchNorm statistics (``busseg.engine.batchnorm``): how many training batches
#: (null: all of them).
PRECISE_BN_SCHEMA: dict[str, Callable] = {
    "batches": lambda value: None if value is None else _POSITIVE_INTEGER(value),
}


def _check_nested(full: dict, source: str) -> None:
    opt = full["optimizer"]
    if opt.get("name") not in OPTIMIZERS:
        raise ConfigError(f"{source}: optimizer.name must be one of {OPTIMIZERS}, got {opt.get('name')!r}")
    if "lr" not in opt:
        raise ConfigError(f"{source}: optimizer.lr is required")
    check_section({k: v for k, v in opt.items() if k != "name"}, OPTIMIZER_SCHEMAS[opt["name"]], "optimizer", source)
    sched = full["scheduler"]
    if sched.get("name", "none") not in SCHEDULERS:
        raise ConfigError(f"{source}: scheduler.name must be one of {SCHEDULERS}, got {sched.get('name')!r}")
    check_section({k: v for k, v in sched.items() if k != "name"}, SCHEDULER_SCHEMAS[sched.get("name", "none")],
                  f"scheduler ({sched.get('name', 'none')})", source)
    if not isinstance(full["loss"].get("name"), str):
        raise ConfigError(f"{source}: loss.name is required (the objective's registered name)")
    # the augmentation module owns its schema (and expands a preset); the preset's name stays in
    # the recipe so that a saved recipe.yaml says which preset it came from, and re-validating
    # the expanded section gives it back unchanged (a resumed run compares equal)
    preset = full["augmentation"].get("preset")
    resolved = resolve_augmentation(full["augmentation"], source)
    full["augmentation"] = {"preset": preset, **resolved} if preset else resolved
    check_section(full["validation"], VALIDATION_SCHEMA, "validation", source)
    if full["early_stopping"] is not None:
        check_section(full["early_stopping"], EARLY_STOPPING_SCHEMA, "early_stopping", source)
    if full["precise_bn"] is not None:
        check_section(full["precise_bn"], PRECISE_BN_SCHEMA, "precise_bn", source)
    if full["postprocess"] is not None:
        from busseg.postprocess import PostprocessConfig

        try:
            PostprocessConfig.from_dict(full["postprocess"])
        except ConfigError as exc:
            raise ConfigError(f"{source}: {exc}") from None


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


def _replaces_whole(key: str, value: Any) -> bool:
    """Mappings merge key by key, except ``loss`` (its keys belong together) and a section that
    names a ``preset`` (``augmentation: {preset: robust}``, ``postprocess: {preset: paper}``):
    choosing a preset starts from the preset, it is not mixed with the keys of the section it
    replaces (the paper's ``hflip: 0`` would silently switch off the preset's mirroring)."""
    return key == "loss" or (isinstance(value, dict) and "preset" in value)


def _merge(base: dict, update: dict) -> dict:
    out = copy.deepcopy(base)
    for key, value in update.items():
        if isinstance(value, dict) and isinstance(out.get(key), dict) and not _replaces_whole(key, value):
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
    for key, check in (("epochs", number(1, integer=True)), ("batch_size", number(1, integer=True)),
                       ("image_size", number(8, MAX_IMAGE_SIZE, integer=True)), ("cv_folds", number(2, integer=True)),
                       ("seed", number(0, 2**32 - 1, integer=True))):
        problem = check(full[key])
        if problem:
            raise ConfigError(f"{source}: field {key!r} {problem}")
    if full["in_channels"] not in (1, 3):
        raise ConfigError(f"{source}: in_channels must be 1 or 3, got {full['in_channels']}")
    if full["normalization"] not in NORMALIZATIONS:
        raise ConfigError(f"{source}: normalization must be one of {NORMALIZATIONS}")
    _check_nested(full, source)
    return full


def recipe_path(name_or_path: str | Path) -> Path:
    """The file of a registered recipe name (``elad_net``) or a recipe file path."""
    path = Path(name_or_path)
    if not path.suffix:
        path = recipes_dir() / f"{name_or_path}.yaml"
        if not path.is_file():
            raise ConfigError(f"unknown recipe {str(name_or_path)!r}; known: {', '.join(list_recipes())}")
    elif not path.is_file():
        raise ConfigError(f"recipe file {path} does not exist")
    return path


def read_recipe_fields(name_or_path: str | Path) -> dict:
    """The fields written in a recipe file, unchecked and without defaults (a whole recipe or a
    partial one, see :func:`merge_recipe`)."""
    path = recipe_path(name_or_path)
    try:
        data = yaml.safe_load(path.read_text()) or {}
    except yaml.YAMLError as exc:
        raise ConfigError(f"recipe file {path}: not valid YAML ({exc})") from exc
    if not isinstance(data, dict):
        raise ConfigError(f"recipe file {path}: a recipe must be a mapping of fields")
    return _coerce_numbers(data)


def load_recipe(name_or_path: str | Path) -> dict:
    """Load and validate a recipe by registered name (``elad_net``) or file path."""
    return validate_recipe(read_recipe_fields(name_or_path), str(recipe_path(name_or_path)))


def merge_recipe(recipe: dict, partial: dict, source: str = "partial recipe") -> dict:
    """``partial`` (some recipe fields, e.g. ``{model_options: {base_channels: 8}, epochs: 7}``)
    merged onto ``recipe`` and validated: mappings merge key by key (``loss`` and a section naming
    a ``preset`` are replaced whole, see :func:`_replaces_whole`), other fields are replaced.
    Unknown fields are an error naming ``source``."""
    if not isinstance(partial, dict):
        raise ConfigError(f"{source}: a recipe must be a mapping of fields")
    unknown = sorted(set(partial) - set(DEFAULTS))
    if unknown:
        raise ConfigError(f"{source}: unknown recipe field(s) {unknown}; known: {sorted(DEFAULTS)}")
    return validate_recipe(_merge(recipe, partial), source)


def apply_overrides(recipe: dict, overrides: list[str] | None, source: str = "override") -> dict:
    """Apply ``key.sub=value`` overrides (values parsed as YAML) in order and re-validate.

    ``key=value`` replaces a field (``augmentation={preset: robust}`` replaces the section);
    ``section.key=value`` sets one key of a section, except ``section.preset=NAME``, which starts
    the section from that preset (see :func:`_replaces_whole`)."""
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
        if parts[-1] == "preset" and len(parts) == 2:
            # ``augmentation.preset=robust`` chooses the preset: the section starts from it (later
            # overrides such as ``augmentation.hflip=0`` then change it), see _replaces_whole
            out[parts[0]] = {"preset": value}
            continue
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
