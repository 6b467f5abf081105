"""Aggregating per-image metrics: per-image means within a fold, then mean ± std across folds.

The protocol reported by busseg (and the one to state in a paper's table):

1. each test image gets its own metrics (:func:`busseg.metrics.segmentation.segmentation_metrics`,
   empty masks included under the documented policy, never dropped);
2. a fold's score is the MEAN OVER ITS TEST IMAGES (:func:`summarize_per_image`), not a score of
   the pixels pooled over the fold or over batches;
3. a cross-validation result is the mean and the standard deviation ACROSS FOLDS of the
   fold means (:func:`summarize_folds`).

Standard deviations are sample standard deviations (``ddof=1``, the square root of the unbiased
variance) and are NaN when there is a single value: one fold says nothing about the spread.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np

from busseg.errors import DataError
from busseg.metrics.segmentation import EMPTY_CASES, SEGMENTATION_METRICS


def _mean_std(values: Sequence[float], ddof: int = 1) -> tuple[float, float]:
    array = np.asarray(values, dtype=float)
    mean = float(array.mean()) if array.size else math.nan
    std = float(array.std(ddof=ddof)) if array.size > ddof else math.nan
    return mean, std


def summarize_per_image(rows: list[dict], metrics: Sequence[str] = SEGMENTATION_METRICS) -> dict:
    """Mean and std over images of each metric, with the count of empty-mask cases.

    Args:
        rows: one dict per image, as returned by ``segmentation_metrics`` (other keys, such as
            an image id, are ignored).
        metrics: which metrics to summarize (e.g. add ``"hd95_mm"`` when spacings were known).

    Returns:
        ``{"n": N, "<m>_mean": ..., "<m>_std": ..., "empty_cases": {"missed": a,
        "false_alarm": b, "both_empty": c}}``.

    Raises:
        DataError: when a row lacks a metric or holds a NaN/None for it. NaN would otherwise
            drop the image from the mean silently; the metric functions never produce one.
    """
    if not rows:
        raise DataError("no per-image metrics to summarize (an empty test set?)")
    summary: dict = {"n": len(rows)}
    for metric in metrics:
        values = []
        for index, row in enumerate(rows):
            value = row.get(metric)
            if value is None or not math.isfinite(float(value)):
                name = row.get("id", f"#{index}")
                raise DataError(
                    f"image {name}: metric {metric!r} is {value!r}; every image must have a "
                    "finite value (missing spacing for a *_mm metric?)"
                )
            values.append(float(value))
        summary[f"{metric}_mean"], summary[f"{metric}_std"] = _mean_std(values)
    summary["empty_cases"] = {case: 0 for case in EMPTY_CASES}
    for row in rows:
        case = row.get("empty_case")
        if case is not None:
            if case not in EMPTY_CASES:
                raise DataError(f"unknown empty_case {case!r}; expected one of {list(EMPTY_CASES)}")
            summary["empty_cases"][case] += 1
    return summary


def summarize_folds(
    fold_summaries: list[dict], metrics: Sequence[str] = SEGMENTATION_METRICS
) -> dict:
    """Mean and std ACROSS FOLDS of each fold's per-image mean.

    Args:
        fold_summaries: one :func:`summarize_per_image` result per fold.

    Returns:
        ``{"<m>": {"mean": ..., "std": ..., "folds": [fold 1 mean, ...]}}`` for each metric.
    """
    if not fold_summaries:
        raise DataError("no fold summaries to combine")
    result = {}
    for metric in metrics:
        key = f"{metric}_mean"
        missing = [i for i, fold in enumerate(fold_summaries) if key not in fold]
        if missing:
            raise DataError(f"fold(s) {missing} have no {key!r}")
        per_fold = [float(fold[key]) for fold in fold_summaries]
        mean, std = _mean_std(per_fold)
        result[metric] = {"mean": mean, "std": std, "folds": per_fold}
    return result


def format_mean_std(mean: float, std: float, scale: float = 100, digits: int = 2) -> str:
    """``"81.96 ± 2.01"`` from ``(0.81962, 0.02011)``; ``scale=1`` for distances.

    A NaN std (a single fold) is written as ``"81.96 ± n/a"``.
    """
    std_text = "n/a" if std is None or math.isnan(std) else f"{std * scale:.{digits}f}"
    return f"{mean * scale:.{digits}f} ± {std_text}"
