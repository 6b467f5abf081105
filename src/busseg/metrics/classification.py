"""Benign/malignant classification metrics (malignant is the positive class).

Definitions, from the confusion counts over the test images (TP = malignant called malignant)::

    accuracy    = (TP + TN) / N
    precision   = TP / (TP + FP)            (positive predictive value)
    recall      = TP / (TP + FN)            (sensitivity; also returned as "sensitivity")
    specificity = TN / (TN + FP)
    f1          = 2 TP / (2 TP + FP + FN)
    auc         = area under the ROC curve of ``prob_malignant`` (threshold-free)

Choices:

- an image is called malignant when ``prob_malignant >= threshold`` (default 0.5);
- images whose label is -1 (normal/unknown) are left out and counted in ``n_ignored``;
- a ratio with a zero denominator is 0.0 (scikit-learn's ``zero_division=0``), and ``notes``
  says which one it was;
- AUC is undefined when the labels hold one class only: it is NaN and ``notes`` says so
  (it is never replaced by 0.5 or dropped silently).
"""

from __future__ import annotations

import math

import numpy as np
from sklearn.metrics import roc_auc_score

from busseg.errors import DataError

#: The metrics of :func:`classification_metrics` that are rates in [0, 1].
CLASSIFICATION_METRICS = ("accuracy", "precision", "recall", "specificity", "f1", "auc")


def _to_numpy(values) -> np.ndarray:
    if hasattr(values, "detach"):
        values = values.detach().cpu().numpy()
    return np.asarray(values).reshape(-1)


def classification_metrics(y_true, prob_malignant, threshold: float = 0.5) -> dict:
    """Classification metrics of malignancy probabilities against benign (0)/malignant (1) labels.

    Args:
        y_true: labels, 0 benign, 1 malignant, -1 ignored (normal/unknown).
        prob_malignant: predicted probability of malignancy per image, in [0, 1].
        threshold: decision threshold on the probability.

    Returns:
        ``accuracy, precision, recall, sensitivity, specificity, f1, auc`` (floats, ``auc`` may
        be NaN), counts ``tp, fp, tn, fn, n, n_ignored`` and ``notes`` (a list of strings).
    """
    labels = _to_numpy(y_true)
    probs = _to_numpy(prob_malignant).astype(float)
    if labels.shape != probs.shape:
        raise DataError(f"{labels.size} labels but {probs.size} predicted probabilities")
    bad_labels = sorted(set(np.unique(labels).tolist()) - {-1, 0, 1})
    if bad_labels:
        raise DataError(f"labels must be 0 (benign), 1 (malignant) or -1 (ignored), got {bad_labels}")
    if not np.all((probs >= 0) & (probs <= 1)):
        raise DataError("prob_malignant must hold probabilities in [0, 1] (apply softmax first)")
    if not 0.0 <= threshold <= 1.0:
        raise DataError(f"threshold must be in [0, 1], got {threshold}")

    kept = labels != -1
    labels, probs = labels[kept].astype(int), probs[kept]
    n_ignored = int((~kept).sum())
    if labels.size == 0:
        raise DataError("no benign or malignant image to evaluate (all labels are -1)")
    predicted = probs >= threshold
    positive = labels == 1
    tp = int(np.sum(predicted & positive))
    fp = int(np.sum(predicted & ~positive))
    tn = int(np.sum(~predicted & ~positive))
    fn = int(np.sum(~predicted & positive))
    notes: list[str] = []

    def ratio(name: str, numerator: int, denominator: int) -> float:
        if denominator == 0:
            notes.append(f"{name} set to 0: its denominator is 0")
            return 0.0
        return numerator / denominator

    recall = ratio("recall", tp, tp + fn)
    result = {
        "accuracy": (tp + tn) / labels.size,
        "precision": ratio("precision", tp, tp + fp),
        "recall": recall,
        "sensitivity": recall,
        "specificity": ratio("specificity", tn, tn + fp),
        "f1": ratio("f1", 2 * tp, 2 * tp + fp + fn),
    }
    if np.unique(labels).size < 2:
        notes.append("auc is undefined (NaN): the labels hold a single class")
        result["auc"] = math.nan
    else:
        result["auc"] = float(roc_auc_score(labels, probs))
    result.update(tp=tp, fp=fp, tn=tn, fn=fn, n=int(labels.size), n_ignored=n_ignored, notes=notes)
    return result
