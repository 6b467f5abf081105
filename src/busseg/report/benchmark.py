"""``busseg benchmark run``: a set of models × the folds of ONE shared split, one results folder.

Layout of a results folder (everything the report shows is read back from these files)::

    <results>/benchmark.json                  protocol, datasets, models, every invocation
                                              (command, start/end, versions, per-model status)
    <results>/complexity.json                 parameters, FLOPs, inference times per model
    <results>/<dataset>/split.json            the split every model of <dataset> uses
    <results>/<dataset>/<model>/              a cross-validation directory of the engine
        fold_k/{recipe.yaml,run.json,...}     (busseg.engine.train.cross_validate)
        cv_summary.json, cv_per_image.csv
        cross/<other dataset>/                every fold model on every image of another
                                              dataset (busseg.engine.evaluate.evaluate_run)
        robustness/                           with ``corruptions``: every fold model on its test
                                              images under scanner-like corruptions
                                              (busseg.engine.robustness)  

Training and evaluation are the engine's (``cross_validate`` and ``evaluate_run``); this module
only decides WHAT to run (recipes under a protocol, the shared split) and skips what is done:
re-running the same command skips finished folds, resumes interrupted ones from their
``last.ckpt``, and refuses to mix a different protocol into the same folder.

Protocols:

- ``paper``: each model's own paper recipe (its epochs, size, augmentation, optimiser...);
  only the split is shared.
- ``quick`` (:data:`QUICK_PROTOCOL`): one fixed budget for every model — 128×128, 3 epochs,
  batch 8, the same ``robust`` augmentation preset (:data:`busseg.data.augment.ROBUST_PRESET`),
  no pretrained weights, no early stopping, 3 folds, lesion images only (``include_normal:
  false``) — so that all models run on a CPU in bounded time. A smoke comparison, NOT paper
  numbers; the report says so in a banner. BatchNorm statistics are re-estimated over up to 32
  training batches before every validation (``precise_bn``, :mod:`busseg.engine.batchnorm`):
  after three epochs the running averages still lag the weights, and the comparison should
  score the weights, not that lag.
- a YAML file: a mapping of recipe fields applied to every model's recipe (a common protocol
  of your own, e.g. ``{epochs: 100, image_size: 256, augmentation: {...}}``).

A protocol replaces whole top-level recipe fields (the quick protocol's augmentation replaces
each paper's augmentation, not merges into it); each model keeps its architecture options,
loss, optimiser and scheduler, which belong to the method.
"""

from __future__ import annotations

import copy
import json
import logging
import time
import traceback
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Mapping, Sequence

import yaml

from busseg.engine.io import atomic_write_json
from busseg.engine.recipe import apply_overrides, load_recipe
from busseg.engine.runinfo import command_line, library_versions, timestamp
from busseg.errors import ConfigError

log = logging.getLogger("busseg")

BENCHMARK_FORMAT = "busseg-benchmark/1"

#: The fixed-budget smoke protocol (see the module docstring). Top-level recipe fields.
QUICK_PROTOCOL: dict[str, Any] = {
    "image_size": 128,
    "epochs": 3,
    "batch_size": 8,
    "encoder_weights": "none",
    "augmentation": {"preset": "robust"},
    "early_stopping": None,
    "validation": {"fraction": 0.2, "monitor": "val_dice", "mode": "max"},
    "cv_folds": 3,
    "seed": 0,
    "precise_bn": {"batches": 32},
    "include_normal": False,  # one image set for every model (lesion images only)
}

QUICK_LABEL = "QUICK PROTOCOL — smoke comparison, not paper numbers"

#: Size at which complexity is reported, whatever the training size (issue: GFLOPs at 256²).
COMPLEXITY_SIZE = 256


@dataclass
class Protocol:
    name: str
    #: top-level recipe fields set for every model
    fields: dict[str, Any] = field(default_factory=dict)
    #: ``key.sub=value`` overrides applied after ``fields`` (command line ``--set``)
    overrides: list[str] = field(default_factory=list)

    @property
    def is_quick(self) -> bool:
        return self.name == "quick"

    def to_dict(self) -> dict:
        return {"name": self.name, "fields": self.fields, "overrides": self.overrides,
                "label": QUICK_LABEL if self.is_quick else f"protocol {self.name!r}"}


def resolve_protocol(protocol: str | Path | dict | Protocol, overrides: Sequence[str] | None = None) -> Protocol:
    """``"paper"``, ``"quick"``, a YAML file of recipe fields, a dict, or a Protocol."""
    if isinstance(protocol, Protocol):
        return Protocol(protocol.name, copy.deepcopy(protocol.fields), [*protocol.overrides, *(overrides or [])])
    if isinstance(protocol, dict):
        return Protocol("custom", copy.deepcopy(protocol), list(overrides or []))
    name = str(protocol)
    if name == "paper":
        return Protocol("paper", {}, list(overrides or []))
    if name == "quick":
        return Protocol("quick", copy.deepcopy(QUICK_PROTOCOL), list(overrides or []))
    path = Path(name)
    if not path.is_file():
        raise ConfigError(f"protocol {name!r}: neither 'paper', 'quick' nor an existing YAML file")
    try:
        fields = yaml.safe_load(path.read_text()) or {}
    except yaml.YAMLError as exc:
        raise ConfigError(f"protocol file {path}: not valid YAML ({exc})") from exc
    if not isinstance(fields, dict):
        raise ConfigError(f"protocol file {path}: must be a mapping of recipe fields")
    return Protocol(path.stem, fields, list(overrides or []))


def _base_recipe(model: str, base: str | Path | dict | None) -> dict:
    """The recipe ``model`` starts from: its paper recipe, or ``base`` — a recipe name, a YAML
    file or a dict. A ``base`` with a ``model`` field is a whole recipe (what it leaves out is
    the global default); without one it is a partial recipe merged onto the model's own."""
    from busseg.engine.recipe import merge_recipe, read_recipe_fields, recipe_path, validate_recipe
    from busseg.models import model_info

    own = model_info(model).recipe
    if base is None:
        return load_recipe(own)
    if isinstance(base, dict):
        fields, source = copy.deepcopy(base), f"recipe given for {model}"
    else:
        fields, source = read_recipe_fields(base), str(recipe_path(base))
    if "model" in fields:
        return validate_recipe(fields, source)
    return merge_recipe(load_recipe(own), fields, f"{source} (partial recipe merged onto {own!r})")


def benchmark_recipe(model: str, protocol: Protocol, k: int | None = None, base: str | Path | dict | None = None,
                     model_overrides: Sequence[str] | None = None) -> dict:
    """``model``'s recipe under ``protocol`` (fields, then overrides), then ``model_overrides``
    (this model's own ``key=value`` changes), with ``cv_folds`` set to the shared split's fold
    count. ``base``: the recipe to start from (see :func:`_base_recipe`; default: the model's
    paper recipe)."""
    from busseg.models import model_info

    info = model_info(model)
    recipe = _base_recipe(model, base)
    changes = [f"model={model}"] if recipe["model"] != model else []
    # JSON is valid YAML: the values survive apply_overrides' YAML parsing unchanged.
    changes += [f"{key}={json.dumps(value)}" for key, value in protocol.fields.items()]
    changes += protocol.overrides
    changes += list(model_overrides or [])
    if k is not None:
        changes.append(f"cv_folds={k}")
    recipe = apply_overrides(recipe, changes, f"benchmark protocol {protocol.name!r} for {model}")
    if recipe["image_size"] % info.size_divisor:
        raise ConfigError(f"protocol {protocol.name!r}: model {model!r} needs an image size divisible by "
                          f"{info.size_divisor}, the protocol gives {recipe['image_size']}")
    if not info.segments:
        raise ConfigError(f"model {model!r} does not segment (classification-only variant); "
                          "the benchmark compares segmentation models")
    return recipe


def split_overrides(items: Sequence[str] | None, models: Sequence[str]) -> tuple[list[str], dict[str, list[str]]]:
    """Command-line ``--set`` items → (overrides for every model, ``{model: its own overrides}``).

    ``KEY=VALUE`` applies to every model; ``MODEL:KEY=VALUE`` to that model only (e.g.
    ``unet:model_options.base_channels=8``, an option other models do not take)."""
    common: list[str] = []
    scoped: dict[str, list[str]] = {}
    for item in items or []:
        key = item.partition("=")[0]
        if ":" not in key:
            common.append(item)
            continue
        model, _, rest = item.partition(":")
        if model not in models:
            raise ConfigError(f"--set {item!r}: model {model!r} is not in the run ({', '.join(models)})")
        scoped.setdefault(model, []).append(rest)
    return common, scoped
def parse_cross(items: Sequence[str] | None) -> list[tuple[str, str | None]]:
    """``["busbra=/data/BUS-BRA", "udiat"]`` → ``[("busbra", "/data/BUS-BRA"), ("udiat", None)]``."""
    from busseg.data import DATASETS

    out: list[tuple[str, str | None]] = []
    for item in items or []:
        name, _, root = item.partition("=")
        if name not in DATASETS:
            raise ConfigError(f"--cross {item!r}: unknown dataset {name!r}; choose one of {', '.join(DATASETS)}")
        if any(name == seen for seen, _ in out):
            raise ConfigError(f"--cross {item!r}: dataset {name!r} given twice")
        out.append((name, root or None))
    return out


def plan_benchmark(models: Sequence[str], protocol: Protocol, *, k: int | None = None,
                   recipes: Mapping[str, str | Path | dict] | None = None,
                   model_overrides: Mapping[str, Sequence[str]] | None = None) -> dict[str, dict]:
    """The recipe each model will be trained with, checked exactly as the run checks it (nothing
    written): the model's paper recipe or ``recipes[model]``, under ``protocol``, then
    ``model_overrides[model]``, with ``cv_folds`` = the shared split's fold count ``k``
    (default: the protocol's ``cv_folds``; 5 under ``paper``). Every model, objective,
    optimiser and schedule is built (on the meta device, :func:`busseg.engine.task.check_buildable`),
    so an option one model refuses fails here, before any model trains."""
    from busseg.engine.task import check_buildable

    models = list(dict.fromkeys(models))
    if not models:
        raise ConfigError("benchmark: no models given")
    bases = dict(recipes or {})
    scoped = {m: list(v) for m, v in (model_overrides or {}).items()}
    for what, given in (("recipes", bases), ("overrides", scoped)):
        unknown = sorted(set(given) - set(models))
        if unknown:
            raise ConfigError(f"benchmark: {what} given for models not in the run: {unknown}")
    if k is None:
        k = benchmark_recipe(models[0], protocol, base=bases.get(models[0]),
                             model_overrides=scoped.get(models[0]))["cv_folds"] if protocol.name != "paper" else 5
    planned = {m: benchmark_recipe(m, protocol, k, bases.get(m), scoped.get(m)) for m in models}
    if len({r["include_normal"] for r in planned.values()}) > 1:
        raise ConfigError("benchmark: the recipes disagree on include_normal; one split needs one image set "
                          "(set it in the protocol, e.g. --set include_normal=false)")
    for model, recipe in planned.items():
        try:
            check_buildable(recipe)
        except ConfigError as exc:
            raise ConfigError(f"benchmark: {exc} (under protocol {protocol.name!r}; "
                              f"a model-scoped --set {model}:KEY=VALUE changes this model only)") from exc
    return planned


def check_results_folder(out: str | Path, dataset: str, planned: Mapping[str, dict]) -> dict[str, str]:
    """Refuse to mix recipes in one results folder: a model whose folds in ``out`` were trained
    with another recipe than ``planned[model]`` is an error naming the fields that differ.
    Returns ``{model: "new" | "N fold(s) started or finished"}`` for the plan."""
    state = {}
    for model, recipe in planned.items():
        cv_dir = Path(out) / dataset / model
        saved = sorted(cv_dir.glob("fold_*/recipe.yaml"))
        for path in saved:
            previous = yaml.safe_load(path.read_text())
            if previous != json.loads(json.dumps(recipe)):
                fields = sorted(key for key in set(previous) | set(recipe) if previous.get(key) != recipe.get(key))
                raise ConfigError(f"{cv_dir} holds {model} trained with another recipe ({path}; fields that differ: "
                                  f"{', '.join(fields)}). Use another results folder: one folder = one protocol.")
        state[model] = f"{len(saved)} fold(s) started or finished" if saved else "new"
    return state


# ------------------------------------------------------------------ results folder bookkeeping


def _read_json(path: Path) -> dict | None:
    return json.loads(path.read_text()) if path.is_file() else None


def _check_same_protocol(meta: dict, protocol: Protocol, out: Path) -> None:
    saved = meta.get("protocol") or {}
    if saved.get("fields") != json.loads(json.dumps(protocol.fields)) or saved.get("overrides") != protocol.overrides:
        raise ConfigError(
            f"{out} holds a benchmark run under protocol {saved.get('name')!r} "
            f"(fields {saved.get('fields')}, overrides {saved.get('overrides')}); this command asks for "
            f"{protocol.name!r} (fields {protocol.fields}, overrides {protocol.overrides}). "
            "Use another results folder: one folder = one protocol."
        )


def cv_finished(cv_dir: Path, folds: Sequence[int]) -> bool:
    return (cv_dir / "cv_per_image.csv").is_file() and all(
        (cv_dir / f"fold_{k}" / "result.json").is_file() for k in folds)


def shared_split(out: Path, dataset: str, root, recipe: dict, data_options: dict | None,
                 split: str | Path | None, k: int) -> Path:
    """``<out>/<dataset>/split.json``: created once (group-aware, from the engine's
    ``resolve_split``) or copied from ``split``, and reused by every model afterwards."""
    from busseg.data.splits import load_split, save_split
    from busseg.engine.train import load_dataset, resolve_split

    path = out / dataset / "split.json"
    prepared = load_dataset(dataset, root, recipe, data_options)
    if path.is_file():
        saved = load_split(path, prepared.records)
        if split is not None:
            given = load_split(split, prepared.records)
            if given["folds"] != saved["folds"]:
                raise ConfigError(f"--split {split} differs from the split this results folder already uses ({path})")
        if len(saved["folds"]) != k:
            raise ConfigError(f"{path} has {len(saved['folds'])} folds, this command asks for {k}")
        return path
    new = resolve_split(split, prepared, recipe, dataset)
    if len(new["folds"]) != k:
        raise ConfigError(f"split {split} has {len(new['folds'])} folds, this command asks for {k} (--k)")
    save_split(new, path)
    return path


# ------------------------------------------------------------------ complexity


def measure_complexity(recipe: dict, image_size: int = COMPLEXITY_SIZE, device: str = "cpu") -> dict:
    """Parameters, FLOPs (PyTorch's FlopCounterMode; 1 multiply-add = 2 FLOPs) and inference
    time per image at ``image_size`` (rounded up to the model's size divisor; 256² by default,
    the size the papers report) on CPU and, when CUDA is available, on the GPU; and the FLOPs
    at the size the recipe trains at (``trained_image_size``, ``gflops_trained``), which differ
    for a run trained smaller (the quick protocol's 128², a 64² smoke run)."""
    import torch

    from busseg.engine.task import build_model_from_recipe
    from busseg.models import model_info
    from busseg.models.complexity import count_flops, count_parameters, measure_inference_ms

    divisor = model_info(recipe["model"]).size_divisor
    size = -(-image_size // divisor) * divisor
    model = build_model_from_recipe(recipe, encoder_weights="none")
    flops = count_flops(model, size, recipe["in_channels"])
    trained = recipe["image_size"]
    flops_trained = flops if trained == size else count_flops(model, trained, recipe["in_channels"])
    entry = {
        "model": recipe["model"], "model_options": recipe["model_options"], "in_channels": recipe["in_channels"],
        "image_size": size, "parameters": count_parameters(model), "gflops": flops / 1e9, "gmacs": flops / 2e9,
        "trained_image_size": trained, "gflops_trained": flops_trained / 1e9,
        "cpu_ms": measure_inference_ms(model, size, recipe["in_channels"], device="cpu", warmup=1, repeats=3),
        "cpu_threads": torch.get_num_threads(), "gpu_ms": None, "gpu": None,
        "measured": timestamp(),
        "conventions": "FLOPs from torch.utils.flop_counter (1 MAC = 2 FLOPs; convolutions, matmuls, "
                       "attention only); median ms per image at batch 1, eval mode, float32, at image_size",
    }
    if device != "cpu" and torch.cuda.is_available():
        entry["gpu_ms"] = measure_inference_ms(model, size, recipe["in_channels"], device="cuda", warmup=3, repeats=10)
        entry["gpu"] = torch.cuda.get_device_name(0)
    return entry


# ------------------------------------------------------------------ the runner


def run_benchmark(
    out: str | Path,
    models: Sequence[str],
    *,
    dataset: str = "busi",
    root: str | Path | None = None,
    protocol: str | Path | dict | Protocol = "quick",
    overrides: Sequence[str] | None = None,
    k: int | None = None,
    split: str | Path | None = None,
    folds: Sequence[int] | None = None,
    recipes: Mapping[str, str | Path | dict] | None = None,
    model_overrides: Mapping[str, Sequence[str]] | None = None,
    cross: Sequence[tuple[str, str | None]] = (),
    data_options: dict | None = None,
    corruptions: Sequence[str] | None = None,
    complexity: bool = True,
    report: bool = True,
    accelerator: str = "auto",
    devices: int | str = 1,
    strategy: str = "auto",
    precision: str | None = None,
    progress: bool = True,
) -> dict:
    """Train and test every model of ``models`` on every fold of one shared split of
    ``dataset``, evaluate each fold model on the ``cross`` datasets, measure complexity, and
    write the report. ``recipes`` maps a model to the recipe to start from instead of its paper
    recipe (the protocol still applies on top; a partial recipe is merged onto the paper one);
    ``model_overrides`` maps a model to ``key=value`` overrides of its own, applied last. Every
    model's recipe is checked before the first one trains (:func:`plan_benchmark`), and a model
    already in ``out`` must have been trained with the same recipe (:func:`check_results_folder`).
    ``corruptions``: also run the robustness benchmark (these corruption names, five severities)
    on every fold model's test images. Returns the invocation record added to ``benchmark.json``.

    Failures of one model (an exception while training or evaluating it) are recorded in
    ``benchmark.json`` and the next model runs; they are listed in the returned record's
    ``failed`` and the CLI exits non-zero.
    """
    import torch

    out = Path(out)
    models = list(dict.fromkeys(models))
    proto = resolve_protocol(protocol, overrides)
    recipes = plan_benchmark(models, proto, k=k, recipes=recipes, model_overrides=model_overrides)
    check_results_folder(out, dataset, recipes)
    first = recipes[models[0]]
    k = first["cv_folds"]

    meta_path = out / "benchmark.json"
    meta = _read_json(meta_path)
    if meta is None:
        meta = {"format": BENCHMARK_FORMAT, "created": timestamp(), "protocol": proto.to_dict(),
                "datasets": {}, "invocations": []}
    else:
        _check_same_protocol(meta, proto, out)
    ds_meta = meta["datasets"].setdefault(dataset, {})
    if ds_meta and (ds_meta.get("root") != (str(root) if root else None) or ds_meta.get("data_options") != (data_options or {})):
        raise ConfigError(f"{out}: dataset {dataset!r} was run from root {ds_meta.get('root')} with options "
                          f"{ds_meta.get('data_options')}; this command gives {root} / {data_options or {}}")

    split_recipe = copy.deepcopy(first)
    split_recipe["cv_folds"] = k
    split_path = shared_split(out, dataset, root, split_recipe, data_options, split, k)
    fold_list = list(folds) if folds is not None else list(range(k))
    ds_meta.update(root=str(root) if root else None, data_options=data_options or {},
                   split=str(split_path.relative_to(out)), k=k,
                   models=list(dict.fromkeys([*ds_meta.get("models", []), *models])),
                   cross={**ds_meta.get("cross", {}), **{name: r for name, r in cross}})
    invocation: dict[str, Any] = {"command": command_line(), "started": timestamp(), "dataset": dataset,
                                  "models": models, "folds": fold_list, "versions": library_versions(),
                                  "model_overrides": {m: list(v) for m, v in (model_overrides or {}).items()},
                                  "status": {}, "failed": []}
    meta["invocations"].append(invocation)
    atomic_write_json(meta_path, meta)

    use_gpu = torch.cuda.is_available() and accelerator in ("auto", "gpu", "cuda")
    device = "cuda" if use_gpu else "cpu"
    trainer = dict(accelerator=accelerator, devices=devices, strategy=strategy, precision=precision,
                   progress=progress)
    started = time.time()
    for model in models:
        recipe = recipes[model]
        cv_dir = out / dataset / model
        status: dict[str, Any] = {}
        try:
            t0 = time.time()
            if cv_finished(cv_dir, fold_list):
                status["cv"] = "already finished (skipped)"
            else:
                from busseg.engine.train import cross_validate

                log.info("benchmark: %s on %s, folds %s", model, dataset, fold_list)
                cross_validate(recipe, cv_dir, dataset=dataset, root=root, split=split_path, folds=fold_list,
                               data_options=data_options, resume=True, **trainer)
                status["cv"] = f"trained in {time.time() - t0:.0f} s"
            for name, cross_root in cross:
                cross_dir = cv_dir / "cross" / name
                if (cross_dir / "summary.json").is_file():
                    status[f"cross:{name}"] = "already evaluated (skipped)"
                    continue
                from busseg.engine.evaluate import evaluate_run

                evaluate_run(cv_dir, cross_dir, dataset=name, root=cross_root, subset="all", device=device)
                status[f"cross:{name}"] = "evaluated"
            if corruptions:
                from busseg.engine.robustness import evaluate_corruptions

                # resumable: finished (fold, corruption) parts are reused
                evaluate_corruptions(cv_dir, cv_dir / "robustness", dataset=dataset, root=root,
                                     data_options=data_options, subset="test", corruptions=corruptions,
                                     device=device, progress=progress)
                status["robustness"] = "evaluated"
        except (KeyboardInterrupt, SystemExit):
            raise
        except Exception as exc:  # one broken model must not stop the comparison of the others
            log.error("benchmark: %s failed: %s", model, exc)
            status["error"] = f"{type(exc).__name__}: {exc}"
            status["traceback"] = traceback.format_exc(limit=8)
            invocation["failed"].append(model)
        invocation["status"][model] = status
        atomic_write_json(meta_path, meta)

    if complexity:
        _update_complexity(out / "complexity.json", recipes, device)
    invocation["finished"] = timestamp()
    invocation["seconds"] = round(time.time() - started, 1)
    atomic_write_json(meta_path, meta)
    if report:
        from busseg.report.compose import build_report

        build_report(out)
    return invocation


def _update_complexity(path: Path, recipes: dict[str, dict], device: str) -> None:
    table = _read_json(path) or {}
    for model, recipe in recipes.items():
        saved = table.get(model)
        if (saved and saved.get("model_options") == recipe["model_options"]
                and saved.get("in_channels") == recipe["in_channels"]
                and saved.get("trained_image_size") == recipe["image_size"]
                and (saved.get("gpu_ms") is not None or device == "cpu")):
            continue
        try:
            table[model] = measure_complexity(recipe, device=device)
        except Exception as exc:  # complexity is informative; never lose a finished benchmark to it
            log.warning("complexity of %s not measured: %s", model, exc)
            table[model] = {"error": f"{type(exc).__name__}: {exc}"}
        atomic_write_json(path, table)


__all__ = ["QUICK_LABEL", "QUICK_PROTOCOL", "Protocol", "benchmark_recipe", "check_results_folder",
           "measure_complexity", "parse_cross", "plan_benchmark", "resolve_protocol", "run_benchmark",
           "split_overrides"]
