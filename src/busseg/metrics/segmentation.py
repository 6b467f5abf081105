"""Per-image segmentation metrics for binary lesion masks, with one empty-mask policy.

Every metric is computed for ONE image from a boolean prediction and a boolean reference mask
of the same ``[H, W]`` shape. Dataset scores are per-image means (see
:mod:`busseg.metrics.aggregate`), never pixels pooled over a dataset or a batch.

Overlap metrics, from the confusion counts TP, FP, FN, TN of the image's pixels::

    dice        = 2 TP / (2 TP + FP + FN)
    iou         = TP / (TP + FP + FN)                 (Jaccard index)
    precision   = TP / (TP + FP)
    recall      = TP / (TP + FN)                      (sensitivity)
    specificity = TN / (TN + FP)
    accuracy    = (TP + TN) / (H W)

Surface-distance metrics, in pixels (and in millimetres when a pixel spacing is given):

- the *surface* of a mask is the set of its foreground pixels removed by one binary erosion
  with the 4-connected cross (``scipy.ndimage.binary_erosion``; outside the image counts as
  background, so lesion pixels on the image border are surface pixels): the surface of
  MONAI's ``get_mask_edges``.
- ``d(a, S)`` is the Euclidean distance from surface pixel ``a`` to the nearest pixel of the
  other mask's surface ``S``, read off ``scipy.ndimage.distance_transform_edt`` (with
  ``sampling=spacing`` for millimetres).
- ``hd95 = max(P95{d(a, S_target) : a in S_pred}, P95{d(b, S_pred) : b in S_target})``: the
  larger of the two DIRECTED 95th percentiles (linear interpolation between order statistics,
  ``numpy.percentile``'s default). This is the definition of
  ``monai.metrics.compute_hausdorff_distance(percentile=95)`` and agrees with it whenever both
  masks are non-empty. The other definition in use (95th percentile of the distances of both
  directions pooled) is not used.
- ``asd`` (average symmetric surface distance) is the mean of the pooled distances of both
  directions, ``(sum_a d(a, S_target) + sum_b d(b, S_pred)) / (|S_pred| + |S_target|)``, as
  ``monai.metrics.compute_average_surface_distance(symmetric=True)``.

Empty-mask policy: ONE policy, and no case is ever dropped. ``empty_case`` names what happened
when a mask is empty — ``"missed"`` (the reference has a lesion, the prediction is empty),
``"false_alarm"`` (the prediction marks a lesion on an image without one) or ``"both_empty"``
(a correct "no lesion") — and is ``None`` when both masks have foreground:

- ``"both_empty"``: Dice = IoU = precision = recall = specificity = 1, hd95 = asd = 0.
- ``"missed"`` and ``"false_alarm"``: Dice = IoU = 0, hd95 = asd = the image diagonal,
  precision = recall = 0.

The image diagonal (``sqrt(H^2 + W^2)`` px; ``sqrt((H s_row)^2 + (W s_col)^2)`` mm) is a
worst-case distance: it exceeds every distance between two pixels of the image. MONAI returns
NaN or inf here and NaN vanishes from a ``nanmean``, hiding missed lesions; here such cases
count at the worst value and :func:`busseg.metrics.aggregate.summarize_per_image` reports how
many there were.

Why written here and not taken from MONAI (``monai.metrics``, a test dependency that these
functions are checked against): MONAI's metrics return NaN or inf when a mask is empty and
expect batched one-hot tensors; busseg needs ONE empty-mask policy that never drops a case
(above), per-image numbers on NumPy masks of any size (images keep their own geometry), and
millimetres from a per-image pixel spacing. The distance computations themselves are SciPy's
(``binary_erosion``, ``distance_transform_edt``); on non-empty masks every value agrees with
MONAI's (tests/test_metrics.py).

Zero denominators (one rule for precision and recall): a ratio whose denominator is 0 is 1
when both masks are empty and 0 otherwise, so that neither a missed lesion (precision's
TP + FP = 0) nor a false alarm (recall's TP + FN = 0) scores as perfect. Specificity's
denominator TN + FP is 0 only when the reference fills the whole image; FP is then 0 too and
specificity is 1. Accuracy's denominator is never 0.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np
from scipy import ndimage

from busseg.errors import DataError

#: Every metric :func:`segmentation_metrics` returns (distances in pixels).
SEGMENTATION_METRICS = ("dice", "iou", "precision", "recall", "specificity", "accuracy", "hd95", "asd")

#: Values of ``empty_case`` (besides ``None``): what happened when a mask is empty.
EMPTY_CASES = {
    "missed": "the reference has a lesion, the prediction is empty (the lesion is missed)",
    "false_alarm": "the reference is empty, the prediction marks a lesion (a false alarm)",
    "both_empty": "prediction and reference both empty (a correct 'no lesion')",
}

#: The names per-image CSVs written before busseg named the outcome carried (they named the
#: empty mask: ``pred_only`` read like "only the prediction has a lesion" but meant a miss).
LEGACY_EMPTY_CASES = {"pred_only": "missed", "target_only": "false_alarm", "both": "both_empty"}

# 4-connected cross: the structuring element of MONAI's get_mask_edges (scipy's default).
_CROSS = ndimage.generate_binary_structure(2, 1)


def as_binary_mask(mask, name: str = "mask") -> np.ndarray:
    """Return ``mask`` as a boolean ``[H, W]`` array.

    Accepts booleans, or numbers that are all 0 or 1 (a NumPy array, a torch tensor, nested
    lists); a leading singleton axis (``[1, H, W]``) is dropped. Probabilities are refused:
    threshold them first, the threshold is part of the method.
    """
    if hasattr(mask, "detach"):  # a torch tensor, without importing torch here
        mask = mask.detach().cpu().numpy()
    array = np.asarray(mask)
    if array.ndim == 3 and array.shape[0] == 1:
        array = array[0]
    if array.ndim != 2:
        raise DataError(f"{name}: expected one 2-D mask [H, W], got shape {array.shape}")
    if array.dtype == bool:
        return array
    if not np.isin(array, (0, 1)).all():
        values = np.unique(array)[:5]
        raise DataError(
            f"{name}: a binary mask must hold only 0/1 or booleans, found values such as "
            f"{values.tolist()} (threshold probabilities before computing metrics)"
        )
    return array.astype(bool)


def _pixel_spacing(spacing) -> tuple[float, float] | None:
    if spacing is None:
        return None
    values = (float(spacing),) * 2 if np.isscalar(spacing) else tuple(float(s) for s in spacing)
    if len(values) != 2 or not all(math.isfinite(s) and s > 0 for s in values):
        raise DataError(
            f"pixel spacing must be (row_mm, column_mm), two positive numbers, got {spacing!r}"
        )
    return values


def confusion_counts(pred: np.ndarray, target: np.ndarray) -> tuple[int, int, int, int]:
    """Pixel counts ``(TP, FP, FN, TN)`` of a boolean prediction against a boolean reference."""
    tp = int(np.count_nonzero(pred & target))
    fp = int(np.count_nonzero(pred & ~target))
    fn = int(np.count_nonzero(~pred & target))
    tn = int(pred.size - tp - fp - fn)
    return tp, fp, fn, tn


def mask_surface(mask: np.ndarray) -> np.ndarray:
    """Surface pixels of a boolean mask: foreground pixels that one erosion removes."""
    return mask & ~ndimage.binary_erosion(mask, structure=_CROSS, border_value=0)


def image_diagonal(shape: Sequence[int], spacing: tuple[float, float] | None = None) -> float:
    """Length of the image diagonal, in pixels or (with ``spacing``) in millimetres."""
    sy, sx = spacing if spacing is not None else (1.0, 1.0)
    return float(math.hypot(shape[0] * sy, shape[1] * sx))


def directed_surface_distances(
    pred: np.ndarray, target: np.ndarray, spacing: tuple[float, float] | None = None
) -> tuple[np.ndarray, np.ndarray]:
    """Distances from each surface pixel of one mask to the other mask's surface.

    Both masks must be non-empty. Returns ``(pred_to_target, target_to_pred)``. The masks are
    first cropped to the bounding box of their union (plus one pixel): every surface pixel
    lies inside it, so the distance transforms of the crop give the exact distances, faster.
    """
    rows = np.flatnonzero((pred | target).any(axis=1))
    cols = np.flatnonzero((pred | target).any(axis=0))
    window = (
        slice(max(rows[0] - 1, 0), rows[-1] + 2),
        slice(max(cols[0] - 1, 0), cols[-1] + 2),
    )
    # Eroding the crop equals eroding the whole image: the one-pixel margin is background in
    # both masks, and where the crop meets the image border, outside counts as background.
    pred_surface = mask_surface(pred[window])
    target_surface = mask_surface(target[window])
    to_target = ndimage.distance_transform_edt(~target_surface, sampling=spacing)
    to_pred = ndimage.distance_transform_edt(~pred_surface, sampling=spacing)
    return to_target[pred_surface], to_pred[target_surface]


def hausdorff_distance_95(pred_to_target: np.ndarray, target_to_pred: np.ndarray) -> float:
    """HD95: the larger of the two directed 95th percentiles (MONAI's definition)."""
    return float(max(np.percentile(pred_to_target, 95), np.percentile(target_to_pred, 95)))


def average_surface_distance(pred_to_target: np.ndarray, target_to_pred: np.ndarray) -> float:
    """ASD: the mean of the surface distances of both directions, pooled."""
    total = pred_to_target.sum() + target_to_pred.sum()
    return float(total / (pred_to_target.size + target_to_pred.size))


def _ratio(numerator: int, denominator: int, both_empty: bool) -> float:
    if denominator == 0:
        return 1.0 if both_empty else 0.0
    return numerator / denominator


def segmentation_metrics(
    pred, target, spacing: tuple[float, float] | float | None = None
) -> dict[str, float | int | str | None]:
    """All segmentation metrics of one image (see the module docstring for the definitions).

    Args:
        pred: predicted mask ``[H, W]``, boolean or 0/1.
        target: reference mask of the same shape.
        spacing: pixel spacing ``(row_mm, column_mm)`` (or one number for square pixels); when
            given, ``hd95_mm`` and ``asd_mm`` are added.

    Returns:
        ``dice, iou, precision, recall, specificity, accuracy`` in [0, 1], ``hd95, asd`` in
        pixels, ``hd95_mm, asd_mm`` (with ``spacing``), the counts ``tp, fp, fn, tn`` and
        ``empty_case`` (``None``, ``"missed"``, ``"false_alarm"`` or ``"both_empty"``).
    """
    pred = as_binary_mask(pred, "prediction")
    target = as_binary_mask(target, "reference mask")
    if pred.shape != target.shape:
        raise DataError(
            f"prediction shape {pred.shape} differs from reference mask shape {target.shape}"
        )
    pixel_spacing = _pixel_spacing(spacing)
    tp, fp, fn, tn = confusion_counts(pred, target)
    pred_empty, target_empty = tp + fp == 0, tp + fn == 0
    both_empty = pred_empty and target_empty
    empty_case = (
        "both_empty" if both_empty else "missed" if pred_empty else "false_alarm" if target_empty else None
    )

    result: dict[str, float | int | str | None] = {
        "dice": _ratio(2 * tp, 2 * tp + fp + fn, both_empty),
        "iou": _ratio(tp, tp + fp + fn, both_empty),
        "precision": _ratio(tp, tp + fp, both_empty),
        "recall": _ratio(tp, tp + fn, both_empty),
        "specificity": _ratio(tn, tn + fp, True),  # TN + FP = 0 forces FP = 0: nothing wrong
        "accuracy": (tp + tn) / pred.size,
    }

    scales = {"": None} if pixel_spacing is None else {"": None, "_mm": pixel_spacing}
    for suffix, scale in scales.items():
        if both_empty:
            hd95 = asd = 0.0
        elif empty_case is not None:
            hd95 = asd = image_diagonal(pred.shape, scale)
        else:
            forward, backward = directed_surface_distances(pred, target, scale)
            hd95 = hausdorff_distance_95(forward, backward)
            asd = average_surface_distance(forward, backward)
        result["hd95" + suffix] = hd95
        result["asd" + suffix] = asd

    result.update(tp=tp, fp=fp, fn=fn, tn=tn, empty_case=empty_case)
    return result


def batch_segmentation_metrics(preds, targets, spacings=None) -> list[dict]:
    """:func:`segmentation_metrics` for each image of a batch or list.

    Args:
        preds, targets: ``[N, H, W]`` or ``[N, 1, H, W]`` arrays/tensors, or sequences of
            ``[H, W]`` masks (sizes may differ between images, not within a pair).
        spacings: ``None``; one spacing for every image (a number or a ``(row_mm,
            column_mm)`` pair); or a sequence of one spacing PAIR per image (entries may be
            ``None`` for images of unknown spacing; a sequence of two numbers is read as one
            pair, not as two per-image spacings).
    """
    if hasattr(preds, "detach"):
        preds = preds.detach().cpu().numpy()
    if hasattr(targets, "detach"):
        targets = targets.detach().cpu().numpy()
    if len(preds) != len(targets):
        raise DataError(f"{len(preds)} predictions but {len(targets)} reference masks")
    if spacings is None or _is_one_spacing(spacings):
        spacings = [spacings] * len(preds)
    elif len(spacings) != len(preds):
        raise DataError(f"{len(spacings)} pixel spacings for {len(preds)} images")
    rows = []
    for index, (pred, target, spacing) in enumerate(zip(preds, targets, spacings)):
        try:
            rows.append(segmentation_metrics(pred, target, spacing))
        except DataError as exc:
            raise DataError(f"image {index}: {exc}") from exc
    return rows


def _is_one_spacing(spacings) -> bool:
    if np.isscalar(spacings):
        return True
    entries = list(spacings)
    return len(entries) == 2 and all(np.isscalar(s) for s in entries)
