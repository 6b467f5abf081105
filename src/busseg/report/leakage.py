"""``busseg benchmark leakage``: how much a random image-level split inflates results.

The same model, recipe, fold count, seed and validation fraction are cross-validated twice on
the same images:

- ``random``: :func:`busseg.data.splits.random_split`, images assigned to folds one by one
  (stratified by label) — near-duplicates of a test image may sit in its training folds;
- ``grouped``: :func:`busseg.data.splits.make_split` with the duplicate clusters of
  :func:`busseg.data.audit.audit_dataset` kept inside one fold (busseg's default split).

The grouping is the only difference. The study reports, per split, how many test images have
a near-duplicate (same audit cluster) in the training or validation part of their fold, the
segmentation metrics of both cross-validations (mean ± std across folds) and their difference
(random − grouped), and a paired comparison of per-image Dice (every image is tested exactly
once under each split), overall and on the images that leak under the random split.

Layout: ``<out>/leakage.json`` (protocol, splits, invocations), ``<out>/splits/{random,
grouped}.json``, ``<out>/<model>/{random,grouped}/`` (cross-validation directories of the
engine), ``<out>/leakage.md`` and ``<out>/leakage.html``.
"""

from __future__ import annotations

import json
import logging
from collections import Counter
from pathlib import Path
from typing import Sequence

import numpy as np

from busseg.engine.io import atomic_write_json, atomic_write_text
from busseg.engine.runinfo import command_line, library_versions, timestamp
from busseg.errors import ConfigError
from busseg.report.benchmark import QUICK_LABEL, Protocol, plan_benchmark, resolve_protocol
from busseg.report.html import Cell, Document, Table, to_html, to_markdown
from busseg.report.stats import paired_test

log = logging.getLogger("busseg")

SPLITS = ("random", "grouped")
LEAKAGE_METRICS = ("dice", "iou", "precision", "recall", "hd95")


def leaked_test_images(split: dict, groups: dict[str, str]) -> dict[int, list[str]]:
    """Per fold, the test images that share a duplicate cluster (``groups``: id → cluster, as
    :meth:`AuditReport.group_map`) with an image of that fold's training or validation part."""
    out: dict[int, list[str]] = {}
    for entry in split["folds"]:
        seen = {groups[i] for i in entry["train"] + entry["val"] if i in groups}
        out[entry["fold"]] = sorted(i for i in entry["test"] if i in groups and groups[i] in seen)
    return out


def _make_splits(prepared, dataset: str, k: int, seed: int, val_fraction: float, directory: Path) -> tuple[dict, dict]:
    from busseg.data.audit import audit_dataset
    from busseg.data.splits import load_split, make_split, random_split, save_split

    groups = audit_dataset(prepared.records).group_map()
    splits = {}
    for name in SPLITS:
        path = directory / f"{name}.json"
        if path.is_file():
            splits[name] = load_split(path, prepared.records)
            continue
        if name == "random":
            split = random_split(prepared.records, k=k, seed=seed, val_fraction=val_fraction, dataset=dataset)
        else:
            split = make_split(prepared.records, k=k, seed=seed, val_fraction=val_fraction, groups=groups, dataset=dataset)
        save_split(split, path)
        splits[name] = split
    return splits, groups


def leakage_study(
    out: str | Path,
    models: Sequence[str],
    *,
    dataset: str = "busi",
    root: str | Path | None = None,
    protocol: str | Path | dict | Protocol = "quick",
    overrides: Sequence[str] | None = None,
    k: int | None = None,
    recipes: dict | None = None,
    model_overrides: dict | None = None,
    data_options: dict | None = None,
    accelerator: str = "auto",
    devices: int | str = 1,
    strategy: str = "auto",
    precision: str | None = None,
    progress: bool = True,
) -> dict:
    """Cross-validate each model under a random and a duplicate-aware split of ``dataset``
    and write the comparison (see the module docstring). Finished folds are skipped on a
    re-run. Returns the numbers written to ``leakage.json``."""
    from busseg.engine.train import cross_validate, load_dataset

    out = Path(out)
    models = list(dict.fromkeys(models))
    proto = resolve_protocol(protocol, overrides)
    model_recipes = plan_benchmark(models, proto, k=k, recipes=recipes, model_overrides=model_overrides)
    first = model_recipes[models[0]]
    k = first["cv_folds"]
    seed, val_fraction = first["seed"], float(first["validation"]["fraction"])

    meta_path = out / "leakage.json"
    meta = json.loads(meta_path.read_text()) if meta_path.is_file() else None
    setup = {"protocol": proto.to_dict(), "dataset": dataset, "root": str(root) if root else None,
             "data_options": data_options or {}, "k": k, "seed": seed, "val_fraction": val_fraction}
    if meta is not None and {key: meta.get(key) for key in setup} != json.loads(json.dumps(setup)):
        raise ConfigError(f"{out} holds a leakage study with another setup ({meta_path}); use another folder")
    meta = meta or {**setup, "created": timestamp(), "invocations": [], "models": {}}
    meta["invocations"].append({"command": command_line(), "started": timestamp(), "models": models,
                                "versions": library_versions()})
    atomic_write_json(meta_path, meta)

    prepared = load_dataset(dataset, root, first, data_options)
    splits, groups = _make_splits(prepared, dataset, k, seed, val_fraction, out / "splits")
    leaks = {name: leaked_test_images(split, groups) for name, split in splits.items()}
    meta["splits"] = {name: {"file": f"splits/{name}.json",
                             "leaked_test_images": sum(len(v) for v in leaks[name].values()),
                             "leaked_by_fold": {str(f): len(v) for f, v in leaks[name].items()}}
                      for name in SPLITS}
    meta["n_images"] = len(prepared)
    sizes = Counter(groups.values())
    meta["n_clustered_images"] = sum(1 for g in groups.values() if sizes[g] > 1)
    trainer = dict(accelerator=accelerator, devices=devices, strategy=strategy, precision=precision,
                   progress=progress)
    for model in models:
        for name in SPLITS:
            cross_validate(model_recipes[model], out / model / name, dataset=dataset, root=root,
                           split=out / "splits" / f"{name}.json", data_options=data_options, resume=True, **trainer)
        meta["models"][model] = compare(out / model, sorted({i for v in leaks["random"].values() for i in v}))
    meta["invocations"][-1]["finished"] = timestamp()
    atomic_write_json(meta_path, meta)
    write_leakage_report(out, meta)
    return meta


def compare(model_dir: Path, leaked_ids: Sequence[str]) -> dict:
    """Metrics of both cross-validations of one model (from their per-image CSVs), their
    difference, and paired per-image Dice tests (all images; the leaking images)."""
    from busseg.report.results import read_per_image
    from busseg.report.tables import fold_aggregate

    frames = {name: read_per_image(model_dir / name / "cv_per_image.csv") for name in SPLITS}
    result: dict = {"metrics": {}, "difference": {}}
    for name, frame in frames.items():
        result["metrics"][name] = {m: fold_aggregate(frame, m) for m in LEAKAGE_METRICS}
    for m in LEAKAGE_METRICS:
        result["difference"][m] = result["metrics"]["random"][m]["mean"] - result["metrics"]["grouped"][m]["mean"]
    dice = {name: frame.set_index("id")["dice"] for name, frame in frames.items()}
    common = dice["random"].index.intersection(dice["grouped"].index)
    for subset, ids in (("all_images", list(common)), ("leaking_images", [i for i in leaked_ids if i in common])):
        entry: dict = {"n": len(ids)}
        if ids:
            a, b = dice["random"].loc[ids].to_numpy(), dice["grouped"].loc[ids].to_numpy()
            entry.update(random_dice=float(np.mean(a)), grouped_dice=float(np.mean(b)))
            if len(ids) >= 2:
                test = paired_test(a, b, "random", "grouped")
                entry.update(t_pvalue=test.t_pvalue, wilcoxon_pvalue=test.wilcoxon_pvalue)
        result[subset] = entry
    return result


def write_leakage_report(out: Path, meta: dict) -> dict[str, Path]:
    quick = meta["protocol"].get("name") == "quick"
    doc = Document(f"busseg leakage study: random vs duplicate-aware split on {meta['dataset']}")
    if quick:
        doc.paragraph(QUICK_LABEL, css_class="banner")
    doc.paragraph(f"{meta['n_images']} images, {meta['n_clustered_images']} of them in near-duplicate clusters "
                  f"or patient groups (busseg.data.audit); {meta['k']} folds, seed {meta['seed']}, validation fraction "
                  f"{meta['val_fraction']}, protocol '{meta['protocol']['name']}'. Both splits are stratified by label; "
                  "only the grouping differs. Metrics: mean ± std across folds of per-image means.")
    doc.table(Table(["Split", "File", "Test images with a near-duplicate in their training/validation folds"],
                    [[name, Cell(info["file"], href=info["file"]), str(info["leaked_test_images"])]
                     for name, info in meta["splits"].items()], "Leakage of each split"))
    header = ["Model", "Split"] + [m.upper() if m == "hd95" else m.capitalize() for m in LEAKAGE_METRICS]
    rows = []
    for model, result in meta["models"].items():
        for name in SPLITS:
            cells = []
            for m in LEAKAGE_METRICS:
                v = result["metrics"][name][m]
                scale = 1 if m == "hd95" else 100
                std = "n/a" if not np.isfinite(v["std"]) else f"{v['std'] * scale:.2f}"
                cells.append(Cell(f"{v['mean'] * scale:.2f} ± {std}", href=f"{model}/{name}/cv_per_image.csv"))
            rows.append([model, name] + cells)
        rows.append([model, "random − grouped"] + [f"{result['difference'][m] * (1 if m == 'hd95' else 100):+.2f}"
                                                   for m in LEAKAGE_METRICS])
    doc.table(Table(header, rows, "Cross-validation under each split (rates in %, HD95 in px); the last row of each "
                                  "model is the inflation from the random split"))
    rows = []
    for model, result in meta["models"].items():
        for subset in ("all_images", "leaking_images"):
            e = result[subset]
            fmt = lambda key: f"{e[key] * 100:.2f}" if key in e else "—"  # noqa: E731
            pfmt = lambda key: f"{e[key]:.4g}" if key in e else "—"  # noqa: E731
            rows.append([model, subset.replace("_", " "), str(e["n"]), fmt("random_dice"), fmt("grouped_dice"),
                         pfmt("t_pvalue"), pfmt("wilcoxon_pvalue")])
    doc.table(Table(["Model", "Images", "n", "Dice random (%)", "Dice grouped (%)", "p (paired t)", "p (Wilcoxon)"],
                    rows, "Per-image Dice of the same images under both splits ('leaking images': test images with a "
                          "near-duplicate in training under the random split)"))
    doc.paragraph("Commands: " + "; ".join(inv["command"] for inv in meta["invocations"]) + ". Setup: ",
                  Cell("leakage.json", href="leakage.json"), ".")
    return {"markdown": atomic_write_text(out / "leakage.md", to_markdown(doc, out)),
            "html": atomic_write_text(out / "leakage.html", to_html(doc))}


__all__ = ["compare", "leaked_test_images", "leakage_study", "write_leakage_report"]
