"""The report's tables, each recomputed from per-image CSVs.

Aggregation (busseg's protocol, :mod:`busseg.metrics.aggregate`): a fold's score is the mean
over its test images; a model's score is the mean ± sample standard deviation (ddof = 1) of
its fold scores. For cross-dataset tables the "folds" are the fold MODELS, each applied to
every image of the other dataset. Rates are shown in percent, distances in pixels of the
geometry the results were scored in (each image's own by default, see
:mod:`busseg.engine.evaluate`; millimetres when every image had a pixel spacing).

Each ``*_numbers`` function returns plain numbers (written to ``report_numbers.json`` and
checked by the tests against the CSVs); each ``*_table`` function formats them.
"""

from __future__ import annotations

import math
from typing import Mapping, Sequence

import numpy as np
import pandas as pd

from busseg.metrics.aggregate import format_mean_std
from busseg.metrics.classification import classification_metrics
from busseg.report.html import Cell, Table
from busseg.report.results import ModelResults
from busseg.report.stats import FriedmanNemenyi, PairedTest

RATE_METRICS = ("dice", "iou", "precision", "recall", "specificity", "accuracy")
DISTANCE_METRICS = ("hd95", "asd")
MAIN_METRICS = RATE_METRICS + DISTANCE_METRICS
CLASS_METRICS = ("iou", "precision", "recall", "specificity", "dice")  # ElaD-Net Table 7's columns
CROSS_METRICS = ("iou", "precision", "recall", "specificity", "dice")  # ElaD-Net Table 8's columns
CLASSIFICATION_COLUMNS = ("accuracy", "precision", "recall", "specificity", "f1", "auc")

TITLES = {"dice": "Dice", "iou": "IoU", "precision": "Precision", "recall": "Recall",
          "specificity": "Specificity", "accuracy": "Accuracy", "hd95": "HD95", "asd": "ASD",
          "f1": "F1", "auc": "AUC"}


def lower_is_better(metric: str) -> bool:
    return metric.split("_")[0] in DISTANCE_METRICS


def across_folds(values_by_fold: Sequence[float]) -> dict:
    """``{"mean", "std", "folds"}``: mean and sample std (ddof 1; NaN for one value)."""
    values = [float(v) for v in values_by_fold]
    array = np.asarray(values, dtype=float)
    std = float(array.std(ddof=1)) if array.size > 1 else math.nan
    return {"mean": float(array.mean()) if array.size else math.nan, "std": std, "folds": values}


def fold_aggregate(per_image: pd.DataFrame, metric: str, by: str = "fold") -> dict:
    """Mean over the images of each ``by`` group (fold), then mean ± std across groups."""
    return across_folds(per_image.groupby(by, sort=True)[metric].mean().tolist())


def distance_columns(frames: Sequence[pd.DataFrame]) -> tuple[str, ...]:
    """``hd95_mm``/``asd_mm`` when every row of every frame has them, else pixel distances."""
    if frames and all({"hd95_mm", "asd_mm"} <= set(f.columns) and f[["hd95_mm", "asd_mm"]].notna().all().all()
                      for f in frames):
        return ("hd95_mm", "asd_mm")
    return DISTANCE_METRICS


def segmentation_numbers(models: Mapping[str, ModelResults], prefix: str = "") -> dict[str, dict]:
    """model -> metric -> across-fold numbers, plus ``n_images``, ``n_folds``, ``missed``
    (test images with a lesion and an empty prediction)."""
    distances = distance_columns([m.per_image for m in models.values()])
    out: dict[str, dict] = {}
    for name, res in models.items():
        df = res.per_image
        if prefix and f"{prefix}dice" not in df.columns:
            continue
        entry: dict = {"n_images": int(len(df)), "n_folds": int(df["fold"].nunique())}
        for metric in RATE_METRICS + distances:
            entry[metric] = fold_aggregate(df, prefix + metric)
        case_column = prefix + "empty_case"
        entry["missed"] = int((df[case_column] == "missed").sum()) if case_column in df.columns else 0
        out[name] = entry
    return out


def class_numbers(models: Mapping[str, ModelResults]) -> dict[str, dict]:
    """model -> label (benign/malignant) -> metric -> across-fold numbers of per-class means."""
    out: dict[str, dict] = {}
    for name, res in models.items():
        df = res.per_image
        for label in ("benign", "malignant"):
            sub = df[df["label"] == label]
            if sub.empty:
                continue
            out.setdefault(name, {})[label] = {"n_images": int(len(sub)),
                                               **{m: fold_aggregate(sub, m) for m in CLASS_METRICS}}
    return out


def classification_numbers(models: Mapping[str, ModelResults]) -> dict[str, dict]:
    """Multi-task models: classification metrics of each fold's test images (malignant
    positive, threshold 0.5), then mean ± std across folds (NaN folds, e.g. an undefined AUC,
    are left out of that metric's mean and counted)."""
    out: dict[str, dict] = {}
    for name, res in models.items():
        df = res.per_image
        if "prob_malignant" not in df.columns:
            continue
        known = df[df["label"].isin(["benign", "malignant"]) & df["prob_malignant"].notna()]
        per_fold = []
        for _, fold_rows in known.groupby("fold", sort=True):
            y = (fold_rows["label"] == "malignant").astype(int).to_numpy()
            per_fold.append(classification_metrics(y, fold_rows["prob_malignant"].to_numpy()))
        if not per_fold:
            continue
        entry: dict = {"n_images": int(len(known))}
        for metric in CLASSIFICATION_COLUMNS:
            values = [float(f[metric]) for f in per_fold]
            finite = [v for v in values if math.isfinite(v)]
            entry[metric] = {**across_folds(finite), "folds": values, "undefined_folds": len(values) - len(finite)}
        out[name] = entry
    return out


def cross_numbers(models: Mapping[str, ModelResults]) -> dict[str, dict[str, dict]]:
    """target dataset -> model -> metric -> mean ± std across the fold models."""
    out: dict[str, dict[str, dict]] = {}
    for name, res in models.items():
        for target, df in res.cross.items():
            out.setdefault(target, {})[name] = {"n_images": int(df["id"].nunique()),
                                                "n_models": int(df["fold"].nunique()),
                                                **{m: fold_aggregate(df, m) for m in CROSS_METRICS}}
    return out


# ------------------------------------------------------------------ formatting


def _unit_scale(metric: str) -> tuple[str, float]:
    if lower_is_better(metric):
        return (" (mm)" if metric.endswith("_mm") else " (px)"), 1.0
    return " (%)", 100.0


def _format(numbers: dict, metric: str) -> str:
    _, scale = _unit_scale(metric)
    return format_mean_std(numbers["mean"], numbers["std"], scale=scale)


def _best_cells(rows: dict[str, dict], metric: str, get=lambda entry, m: entry[m]) -> set[str]:
    """Models whose DISPLAYED mean equals the best displayed mean (ties are all bold; nothing
    is bold when every model shows the same value)."""
    _, scale = _unit_scale(metric)
    shown = {name: round(get(entry, metric)["mean"] * scale, 2) for name, entry in rows.items()
             if math.isfinite(get(entry, metric)["mean"])}
    if len(shown) < 2 or len(set(shown.values())) == 1:
        return set()
    best = min(shown.values()) if lower_is_better(metric) else max(shown.values())
    return {name for name, value in shown.items() if value == best}


def segmentation_table(numbers: dict[str, dict], caption: str, source: list) -> Table:
    first = next(iter(numbers.values()))
    metrics = [m for m, value in first.items() if isinstance(value, dict)]
    bold = {m: _best_cells(numbers, m) for m in metrics}
    header = ["Model", "Folds", "Images"] + [TITLES[m.split("_")[0]] + _unit_scale(m)[0] for m in metrics] + ["Missed"]
    rows = []
    for name, entry in numbers.items():
        rows.append([name, str(entry["n_folds"]), str(entry["n_images"])]
                    + [Cell(_format(entry[m], m), bold=name in bold[m]) for m in metrics]
                    + [str(entry["missed"])])
    return Table(header, rows, caption, source)


def class_table(numbers: dict[str, dict], caption: str, source: list) -> Table:
    labels = [lab for lab in ("benign", "malignant") if any(lab in e for e in numbers.values())]
    header = ["Model"] + [f"{lab.capitalize()} {TITLES[m]} (%)" for lab in labels for m in CLASS_METRICS]
    bold = {(lab, m): _best_cells({n: e for n, e in numbers.items() if lab in e}, m, lambda e, k, lab=lab: e[lab][k])
            for lab in labels for m in CLASS_METRICS}
    rows = []
    for name, entry in numbers.items():
        row: list = [name]
        for lab in labels:
            for m in CLASS_METRICS:
                row.append(Cell(_format(entry[lab][m], m), bold=name in bold[(lab, m)]) if lab in entry else "—")
        rows.append(row)
    return Table(header, rows, caption, source)


def classification_table(numbers: dict[str, dict], caption: str, source: list) -> Table:
    header = ["Model", "Images"] + [f"{TITLES.get(m, m.capitalize())} (%)" for m in CLASSIFICATION_COLUMNS]
    bold = {m: _best_cells(numbers, m) for m in CLASSIFICATION_COLUMNS}
    rows = []
    for name, entry in numbers.items():
        row: list = [name, str(entry["n_images"])]
        for m in CLASSIFICATION_COLUMNS:
            text = _format(entry[m], m)
            if entry[m]["undefined_folds"]:
                text += f" ({entry[m]['undefined_folds']} fold(s) undefined)"
            row.append(Cell(text, bold=name in bold[m]))
        rows.append(row)
    return Table(header, rows, caption, source)


def cross_table(numbers: dict[str, dict[str, dict]], trained_on: str, caption: str, source: list) -> Table:
    targets = list(numbers)
    header = ["Model"] + [f"{trained_on}→{t} {TITLES[m]} (%)" for t in targets for m in CROSS_METRICS]
    models = list(dict.fromkeys(n for t in targets for n in numbers[t]))
    bold = {(t, m): _best_cells(numbers[t], m) for t in targets for m in CROSS_METRICS}
    rows = []
    for name in models:
        row: list = [name]
        for t in targets:
            for m in CROSS_METRICS:
                entry = numbers[t].get(name)
                row.append(Cell(_format(entry[m], m), bold=name in bold[(t, m)]) if entry else "—")
        rows.append(row)
    return Table(header, rows, caption, source)


def _p(value: float) -> str:
    if value is None or not math.isfinite(value):
        return "n/a"
    return "<0.0001" if value < 1e-4 else f"{value:.4f}"


def paired_tests_table(tests: list[PairedTest], means: dict[str, float], caption: str, source: list,
                       alpha: float = 0.05) -> Table:
    header = ["Model", "Mean Dice (%)", "Δ vs best (points)", "t", "p (t-test)", "p Holm",
              "W", "p (Wilcoxon)", "p Holm", "Significant (Holm, both tests)"]
    rows: list[list] = []
    reference = tests[0].reference if tests else next(iter(means))
    rows.append([Cell(f"{reference} (reference)", bold=True), f"{means[reference] * 100:.2f}", "—", "—", "—", "—",
                 "—", "—", "—", "—"])
    for t in tests:
        significant = t.t_pvalue_holm < alpha and t.wilcoxon_pvalue_holm < alpha
        rows.append([t.model, f"{means[t.model] * 100:.2f}", f"{t.mean_difference * 100:+.2f}",
                     f"{t.t_statistic:.3f}", _p(t.t_pvalue), _p(t.t_pvalue_holm), f"{t.wilcoxon_statistic:.1f}",
                     _p(t.wilcoxon_pvalue), _p(t.wilcoxon_pvalue_holm), "yes" if significant else "no"])
    return Table(header, rows, caption, source)


def nemenyi_table(result: FriedmanNemenyi, caption: str, source: list) -> Table:
    order = sorted(result.models, key=lambda m: result.average_ranks[m])
    header = ["Model", "Average rank"] + order
    rows = []
    for a in order:
        row: list = [a, f"{result.average_ranks[a]:.2f}"]
        for b in order:
            row.append("—" if a == b else Cell(_p(result.nemenyi[a][b]), bold=result.significant(a, b)))
        rows.append(row)
    return Table(header, rows, caption, source)


def complexity_table(complexity: dict[str, dict], models: Sequence[str], caption: str, source: list) -> Table:
    """Parameters, FLOPs and times at the common size (256², comparable across models and with the
    papers) next to the FLOPs at the size each model was trained at."""
    header = ["Model", "Parameters", "Input", "GFLOPs", "GMACs", "CPU ms / image", "GPU ms / image",
              "Trained at", "GFLOPs as trained"]
    rows = []
    for name in models:
        entry = complexity.get(name)
        if entry is None or "error" in entry:
            rows.append([name] + ["not measured" if entry is None else entry["error"]] + ["—"] * 7)
            continue
        gpu = "not measured" if entry.get("gpu_ms") is None else f"{entry['gpu_ms']:.2f} ({entry['gpu']})"
        channels = entry["in_channels"]
        trained = entry.get("trained_image_size")
        rows.append([name, f"{entry['parameters']:,}", f"{channels}×{entry['image_size']}×{entry['image_size']}",
                     f"{entry['gflops']:.2f}", f"{entry['gmacs']:.2f}",
                     f"{entry['cpu_ms']:.1f} ({entry['cpu_threads']} thread(s))", gpu,
                     "not recorded" if trained is None else f"{channels}×{trained}×{trained}",
                     "—" if trained is None else f"{entry['gflops_trained']:.3f}"])
    return Table(header, rows, caption, source)


__all__ = [
    "MAIN_METRICS",
    "across_folds",
    "class_numbers",
    "class_table",
    "classification_numbers",
    "classification_table",
    "complexity_table",
    "cross_numbers",
    "cross_table",
    "fold_aggregate",
    "nemenyi_table",
    "paired_tests_table",
    "segmentation_numbers",
    "segmentation_table",
]
