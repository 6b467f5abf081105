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

Every number comes from ``sklearn.metrics`` (``confusion_matrix``, ``accuracy_score``,
``precision_score``, ``recall_score`` — specificity is the recall of the benign class —,
``f1_score``, ``roc_auc_score``); this function adds the label checks, the ignored class and the
notes.
"""

from __future__ import annotations

import math

import numpy as np
from sklearn.metrics import (accuracy_score, confusion_matrix, f1_score, precision_score, recall_score,
                             roc_auc_score)

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
    predicted = (probs >= threshold).astype(int)
    tn, fp, fn, tp = (int(c) for c in confusion_matrix(labels, predicted, labels=[0, 1]).ravel())
    notes: list[str] = [f"{name} set to 0: its denominator is 0" for name, denominator in
                        (("precision", tp + fp), ("recall", tp + fn), ("specificity", tn + fp),
                         ("f1", 2 * tp + fp + fn)) if denominator == 0]
    recall = float(recall_score(labels, predicted, pos_label=1, zero_division=0))
    result = {
        "accuracy": float(accuracy_score(labels, predicted)),
        "precision": float(precision_score(labels, predicted, pos_label=1, zero_division=0)),
        "recall": recall,
        "sensitivity": recall,
        "specificity": float(recall_score(labels, predicted, pos_label=0, zero_division=0)),
        "f1": float(f1_score(labels, predicted, pos_label=1, zero_division=0)),
    }
    if np.unique(labels).size < 2:
        notes.append("auc is undefined (NaN): the labels hold a single class")
        result["auc"] = math.nan
    else:
        result["auc"] = float(roc_auc_score(labels, probs))
    result.update(tp=tp, fp=fp, tn=tn, fn=fn, n=int(labels.size), n_ignored=n_ignored, notes=notes)
    return result
