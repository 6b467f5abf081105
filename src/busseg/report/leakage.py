"""``busseg benchmark leakage``: how much a random image-level split inflates results.

The same model, recipe, fold count, seed and validation fraction are cross-validated twice on
the same images:

- ``random``: :func:`busseg.data.splits.random_split`, images assigned to folds one by one
  (stratified by label) — near-duplicates of a test image may sit in its training folds;
- ``grouped``: :func:`busseg.data.splits.make_split` with the duplicate clusters of
  :func:`busseg.data.audit.audit_dataset` (exact, DCT-hash and crop/zoom/shift duplicates, and
  patients) kept inside one fold (busseg's default split).

The grouping is the only difference. The study reports, per split, how many test images have
a duplicate (same audit cluster) in the training or validation part of their fold — and how many
of those only through a crop/zoom pair, which a global hash misses —, the segmentation metrics
of both cross-validations (mean ± std across folds) and their difference (random − grouped), and
the **duplicate-stratified gap**: every image is tested exactly once under each split, so its
two Dice scores are paired; the gap (random − grouped, mean of the per-image differences, with a
95 % paired-t interval, the paired t-test and the Wilcoxon signed-rank test) is given separately
for the test images that have a near or crop duplicate in training under the random split (what
leakage buys), for those that do not (the baseline: different training sets alone), and for all.

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
from busseg.data.splits import grouping_description, leaked_test_images
from busseg.report.stats import paired_test

log = logging.getLogger("busseg")

SPLITS = ("random", "grouped")
LEAKAGE_METRICS = ("dice", "iou", "precision", "recall", "hd95")


def _make_splits(prepared, dataset: str, k: int, seed: int, val_fraction: float, directory: Path):
    from busseg.data.audit import audit_dataset
    from busseg.data.splits import load_split, make_split, random_split, save_split

    report = audit_dataset(prepared.records, read_masks=False, progress=True)
    groups = report.group_map()
    splits = {}
    for name in SPLITS:
        path = directory / f"{name}.json"
        if path.is_file():
            splits[name] = load_split(path, prepared.records)
            continue
        if name == "random":
            split = random_split(prepared.records, k=k, seed=seed, val_fraction=val_fraction, dataset=dataset)
        else:
            split = make_split(prepared.records, k=k, seed=seed, val_fraction=val_fraction, groups=groups,
                               dataset=dataset, grouping_method=report.grouping_method())
        save_split(split, path)
        splits[name] = split
    return splits, groups, report


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
    splits, groups, report = _make_splits(prepared, dataset, k, seed, val_fraction, out / "splits")
    leaks = {name: leaked_test_images(split, groups) for name, split in splits.items()}
    hash_leaks = {name: leaked_test_images(split, report.hash_group_map()) for name, split in splits.items()}
    crop_only = {name: sorted({i for v in leaks[name].values() for i in v}
                              - {i for v in hash_leaks[name].values() for i in v}) for name in SPLITS}
    meta["splits"] = {name: {"file": f"splits/{name}.json",
                             "grouping": grouping_description(splits[name]),
                             "leaked_test_images": sum(len(v) for v in leaks[name].values()),
                             "leaked_only_through_crop_pairs": len(crop_only[name]),
                             "leaked_by_fold": {str(f): len(v) for f, v in leaks[name].items()}}
                      for name in SPLITS}
    meta["n_images"] = len(prepared)
    sizes = Counter(groups.values())
    meta["n_clustered_images"] = sum(1 for g in groups.values() if sizes[g] > 1)
    meta["n_crop_pairs"] = len(report.crop_pairs)
    trainer = dict(accelerator=accelerator, devices=devices, strategy=strategy, precision=precision,
                   progress=progress)
    for model in models:
        for name in SPLITS:
            cross_validate(model_recipes[model], out / model / name, dataset=dataset, root=root,
                           split=out / "splits" / f"{name}.json", data_options=data_options, resume=True, **trainer)
        meta["models"][model] = compare(out / model, sorted({i for v in leaks["random"].values() for i in v}),
                                        crop_only["random"])
    meta["invocations"][-1]["finished"] = timestamp()
    atomic_write_json(meta_path, meta)
    write_leakage_report(out, meta)
    return meta


def _paired_gap(random_dice: np.ndarray, grouped_dice: np.ndarray) -> dict:
    """Mean per-image Dice under each split, their gap (random − grouped) with a 95 % paired-t
    interval ``mean(d) ± t_{0.975, n-1} sd(d) / sqrt(n)``, and the paired tests."""
    from scipy import stats as scipy_stats

    entry: dict = {"n": int(len(random_dice))}
    if not len(random_dice):
        return entry
    difference = random_dice - grouped_dice
    entry.update(random_dice=float(np.mean(random_dice)), grouped_dice=float(np.mean(grouped_dice)),
                 gap=float(np.mean(difference)))
    if len(difference) >= 2:
        half = float(scipy_stats.t.ppf(0.975, len(difference) - 1) * np.std(difference, ddof=1)
                     / np.sqrt(len(difference)))
        entry["gap_ci95"] = [entry["gap"] - half, entry["gap"] + half]
        test = paired_test(random_dice, grouped_dice, "random", "grouped")
        entry.update(t_pvalue=test.t_pvalue, wilcoxon_pvalue=test.wilcoxon_pvalue)
    return entry


def compare(model_dir: Path, leaked_ids: Sequence[str], crop_only_ids: Sequence[str] = ()) -> dict:
    """Metrics of both cross-validations of one model (from their per-image CSVs), their
    difference, and the paired per-image Dice gap on all images, on the images with a duplicate
    in training under the random split (``leaked_ids``), on those of them linked only by a
    crop/zoom pair (``crop_only_ids``) and on the images without one."""
    from busseg.report.results import read_per_image
    from busseg.report.tables import fold_aggregate

    frames = {name: read_per_image(model_dir / name / "cv_per_image.csv") for name in SPLITS}
    result: dict = {"metrics": {}, "difference": {}}
    for name, frame in frames.items():
        result["metrics"][name] = {m: fold_aggregate(frame, m) for m in LEAKAGE_METRICS}
    for m in LEAKAGE_METRICS:
        result["difference"][m] = result["metrics"]["random"][m]["mean"] - result["metrics"]["grouped"][m]["mean"]
    dice = {name: frame.set_index("id")["dice"] for name, frame in frames.items()}
    common = list(dice["random"].index.intersection(dice["grouped"].index))
    leaked = set(leaked_ids)
    subsets = {
        "all_images": common,
        "leaking_images": [i for i in common if i in leaked],
        "crop_only_leaking_images": [i for i in common if i in set(crop_only_ids)],
        "non_leaking_images": [i for i in common if i not in leaked],
    }
    for subset, ids in subsets.items():
        result[subset] = _paired_gap(dice["random"].loc[ids].to_numpy(float), dice["grouped"].loc[ids].to_numpy(float))
    return result


SUBSET_LABELS = {
    "leaking_images": "with a near or crop duplicate in training",
    "crop_only_leaking_images": "… of which only through a crop/zoom pair",
    "non_leaking_images": "without a duplicate in training",
    "all_images": "all test images",
}


def gap_table(meta: dict) -> Table:
    """The duplicate-stratified gap: per model and subset of test images, n, mean per-image Dice
    under each split, the gap with its 95 % interval, and the paired tests."""
    rows = []
    for model, result in meta["models"].items():
        for subset, label in SUBSET_LABELS.items():
            e = result.get(subset)
            if e is None:
                continue
            pct = lambda key: f"{e[key] * 100:.1f}" if key in e else "—"  # noqa: E731
            p = lambda key: f"{e[key]:.2g}" if key in e else "—"  # noqa: E731
            gap = "—" if "gap" not in e else f"{e['gap'] * 100:+.1f}" + (
                f" [{e['gap_ci95'][0] * 100:+.1f}, {e['gap_ci95'][1] * 100:+.1f}]" if "gap_ci95" in e else "")
            rows.append([model, label, str(e["n"]), pct("random_dice"), pct("grouped_dice"), gap,
                         p("t_pvalue"), p("wilcoxon_pvalue")])
    return Table(["Model", "Test images (under the random split)", "n", "Dice, random split (%)",
                  "Dice, grouped split (%)", "Gap, points [95 % CI]", "p (paired t)", "p (Wilcoxon)"], rows,
                 "Duplicate-stratified leakage gap: every image is tested once under each split, so its two Dice "
                 "scores are paired (mean per-image Dice, not the fold means above). 'Near or crop duplicate in "
                 "training': an image of its audit cluster sits in the training/validation part of its random-split "
                 "fold. The rows without a duplicate show what changing the training set alone does.")


def write_leakage_report(out: Path, meta: dict) -> dict[str, Path]:
    quick = meta["protocol"].get("name") == "quick"
    doc = Document(f"busseg leakage study: random vs duplicate-aware split on {meta['dataset']}")
    if quick:
        doc.paragraph(QUICK_LABEL, css_class="banner")
    doc.paragraph(f"{meta['n_images']} images, {meta['n_clustered_images']} of them in duplicate clusters "
                  f"(exact, DCT-hash and {meta.get('n_crop_pairs', '?')} crop/zoom/shift pairs) or patient groups "
                  f"(busseg.data.audit); {meta['k']} folds, seed {meta['seed']}, validation fraction "
                  f"{meta['val_fraction']}, protocol '{meta['protocol']['name']}'. Both splits are stratified by label; "
                  "only the grouping differs. Metrics: mean ± std across folds of per-image means.")
    doc.table(Table(["Split", "File", "Grouping", "Test images with a duplicate in their training/validation folds",
                     "… only through a crop/zoom pair"],
                    [[name, Cell(info["file"], href=info["file"]), info.get("grouping", "—"),
                      str(info["leaked_test_images"]), str(info.get("leaked_only_through_crop_pairs", "—"))]
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
    doc.table(gap_table(meta))
    doc.paragraph("Commands: " + "; ".join(inv["command"] for inv in meta["invocations"]) + ". Setup: ",
                  Cell("leakage.json", href="leakage.json"), ".")
    return {"markdown": atomic_write_text(out / "leakage.md", to_markdown(doc, out)),
            "html": atomic_write_text(out / "leakage.html", to_html(doc))}


__all__ = ["compare", "gap_table", "leaked_test_images", "leakage_study", "write_leakage_report"]
