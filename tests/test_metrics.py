"""Metrics: MONAI / scikit-learn agreement, hand-computed cases, every empty-mask branch."""

from __future__ import annotations

import math
import time

import numpy as np
import pytest
import torch

from busseg.errors import DataError
from busseg.metrics import (
    SEGMENTATION_METRICS,
    batch_segmentation_metrics,
    classification_metrics,
    format_mean_std,
    segmentation_metrics,
    summarize_folds,
    summarize_per_image,
)


def square(size: int, top: int, left: int, side: int) -> np.ndarray:
    mask = np.zeros((size, size), bool)
    mask[top : top + side, left : left + side] = True
    return mask


def random_blobs(rng: np.random.Generator, size: int = 48) -> np.ndarray:
    """A non-empty mask made of one or two random ellipses."""
    yy, xx = np.mgrid[0:size, 0:size]
    mask = np.zeros((size, size), bool)
    for _ in range(rng.integers(1, 3)):
        cy, cx = rng.uniform(0.2, 0.8, 2) * size
        ry, rx = rng.uniform(0.05, 0.3, 2) * size
        mask |= ((yy - cy) / ry) ** 2 + ((xx - cx) / rx) ** 2 <= 1
    mask[int(size / 2), int(size / 2)] = True  # never empty
    return mask


# ---------------------------------------------------------------- agreement with MONAI


@pytest.fixture(scope="module")
def random_pairs():
    rng = np.random.default_rng(7)
    pairs = [(random_blobs(rng), random_blobs(rng)) for _ in range(12)]
    # masks touching the image border and a one-pixel mask
    pairs.append((square(32, 0, 0, 10), square(32, 3, 0, 12)))
    pairs.append((square(32, 20, 20, 1), square(32, 18, 22, 5)))
    return pairs


def _monai_input(mask: np.ndarray) -> torch.Tensor:
    return torch.from_numpy(mask)[None, None].float()


@pytest.mark.filterwarnings("ignore::FutureWarning")  # MONAI's own deprecation notice
@pytest.mark.parametrize("spacing", [None, (0.3, 0.7)])
def test_distances_agree_with_monai(random_pairs, spacing):
    from monai.metrics import compute_average_surface_distance, compute_hausdorff_distance

    for pred, target in random_pairs:
        ours = segmentation_metrics(pred, target, spacing=spacing)
        p, t = _monai_input(pred), _monai_input(target)
        kwargs = {"include_background": True, "spacing": spacing}
        hd95 = compute_hausdorff_distance(p, t, percentile=95, **kwargs).item()
        asd = compute_average_surface_distance(p, t, symmetric=True, **kwargs).item()
        suffix = "" if spacing is None else "_mm"
        assert ours["hd95" + suffix] == pytest.approx(hd95, rel=1e-5, abs=1e-5)
        assert ours["asd" + suffix] == pytest.approx(asd, rel=1e-5, abs=1e-5)


def test_overlap_agrees_with_monai_and_sklearn(random_pairs):
    from monai.metrics import compute_dice, compute_iou
    from sklearn.metrics import accuracy_score, precision_score, recall_score

    for pred, target in random_pairs:
        ours = segmentation_metrics(pred, target)
        p, t = _monai_input(pred), _monai_input(target)
        assert ours["dice"] == pytest.approx(compute_dice(p, t, include_background=True).item(), rel=1e-6)
        assert ours["iou"] == pytest.approx(compute_iou(p, t, include_background=True).item(), rel=1e-6)
        y_true, y_pred = target.ravel(), pred.ravel()
        assert ours["precision"] == pytest.approx(precision_score(y_true, y_pred))
        assert ours["recall"] == pytest.approx(recall_score(y_true, y_pred))
        assert ours["specificity"] == pytest.approx(recall_score(~y_true, ~y_pred))
        assert ours["accuracy"] == pytest.approx(accuracy_score(y_true, y_pred))
        assert ours["tp"] + ours["fp"] + ours["fn"] + ours["tn"] == pred.size
        assert ours["empty_case"] is None


# ---------------------------------------------------------------- hand-computed cases


@pytest.mark.parametrize("shift", [1, 3, 5])
def test_squares_shifted_horizontally(shift):
    side = 10
    pred, target = square(40, 10, 10, side), square(40, 10, 10 + shift, side)
    m = segmentation_metrics(pred, target)
    overlap = side * (side - shift)
    assert m["tp"] == overlap and m["fp"] == m["fn"] == side * shift
    assert m["dice"] == pytest.approx(2 * overlap / (2 * side * side))
    assert m["iou"] == pytest.approx(overlap / (2 * side * side - overlap))
    assert m["precision"] == pytest.approx((side - shift) / side)
    assert m["specificity"] == pytest.approx(1 - side * shift / (40 * 40 - side * side))
    # Each square's surface: its 36 border pixels. The left and right columns lie `shift` px
    # from the other square's surface (a column of the same rows), the top and bottom rows at
    # distance min(shift, distance to that row's ends): every distance is <= shift and the
    # side columns (about a third of the pixels, > 5%) reach it, so the 95th percentile is shift.
    assert m["hd95"] == pytest.approx(shift)
    assert 0 < m["asd"] < shift


def test_identical_masks_are_perfect():
    mask = square(32, 5, 7, 9)
    m = segmentation_metrics(mask, mask)
    assert m["dice"] == m["iou"] == m["precision"] == m["recall"] == m["specificity"] == m["accuracy"] == 1
    assert m["hd95"] == 0 and m["asd"] == 0 and m["empty_case"] is None


def test_concentric_squares_hand_computed():
    # target 10x10 (rows/cols 10..19) inside pred 14x14 (rows/cols 8..21): a 2-pixel ring.
    pred, target = square(32, 8, 8, 14), square(32, 10, 10, 10)
    m = segmentation_metrics(pred, target)
    assert m["recall"] == 1 and m["precision"] == pytest.approx(100 / 196)
    # target -> pred: each of the 36 surface pixels is 2 px straight across from pred's ring.
    # pred -> target: 52 surface pixels; along a side of 14, the 2 corners are 2*sqrt(2) from
    # target's corner, their neighbours sqrt(5), the 10 middle pixels 2.
    forward = np.array([2 * math.sqrt(2)] * 4 + [math.sqrt(5)] * 8 + [2.0] * 40)
    expected_asd = (forward.sum() + 36 * 2.0) / (52 + 36)
    assert m["asd"] == pytest.approx(expected_asd)
    assert m["hd95"] == pytest.approx(max(np.percentile(forward, 95), 2.0))


def test_spacing_scales_distances():
    pred, target = square(40, 10, 10, 10), square(40, 10, 14, 10)  # shifted along columns
    m = segmentation_metrics(pred, target, spacing=(0.5, 0.25))
    assert m["hd95"] == pytest.approx(4)
    assert m["hd95_mm"] == pytest.approx(4 * 0.25)
    iso = segmentation_metrics(pred, target, spacing=0.5)
    assert iso["asd_mm"] == pytest.approx(iso["asd"] * 0.5)
    assert "hd95_mm" not in segmentation_metrics(pred, target)


# ---------------------------------------------------------------- empty-mask policy


def test_both_empty():
    empty = np.zeros((30, 20), bool)
    m = segmentation_metrics(empty, empty, spacing=(0.1, 0.1))
    assert m["empty_case"] == "both_empty"
    for name in ("dice", "iou", "precision", "recall", "specificity", "accuracy"):
        assert m[name] == 1.0
    assert m["hd95"] == m["asd"] == m["hd95_mm"] == m["asd_mm"] == 0.0


def test_missed_lesion_pred_empty():
    target = square(30, 5, 5, 6)
    m = segmentation_metrics(np.zeros_like(target), target, spacing=(0.1, 0.2))
    assert m["empty_case"] == "missed"
    assert m["dice"] == m["iou"] == m["precision"] == m["recall"] == 0.0
    assert m["specificity"] == 1.0
    assert m["hd95"] == m["asd"] == pytest.approx(math.hypot(30, 30))
    assert m["hd95_mm"] == m["asd_mm"] == pytest.approx(math.hypot(3.0, 6.0))


def test_false_alarm_target_empty():
    pred = square(24, 0, 0, 3)
    m = segmentation_metrics(pred, np.zeros((24, 24), int))
    assert m["empty_case"] == "false_alarm"
    assert m["dice"] == m["iou"] == m["precision"] == m["recall"] == 0.0
    assert m["specificity"] == pytest.approx(1 - 9 / 576)
    assert m["hd95"] == m["asd"] == pytest.approx(math.hypot(24, 24))


def test_diagonal_exceeds_any_real_distance():
    # the farthest two masks can be: opposite corner pixels
    pred, target = square(20, 0, 0, 1), square(20, 19, 19, 1)
    m = segmentation_metrics(pred, target)
    assert m["hd95"] < math.hypot(20, 20)


def test_target_full_image_gives_specificity_one():
    full = np.ones((8, 8), bool)
    m = segmentation_metrics(full, full)
    assert m["specificity"] == 1.0 and m["dice"] == 1.0


# ---------------------------------------------------------------- inputs and batches


def test_rejects_bad_inputs():
    with pytest.raises(DataError, match="threshold"):
        segmentation_metrics(np.full((4, 4), 0.7), np.zeros((4, 4)))
    with pytest.raises(DataError, match="shape"):
        segmentation_metrics(np.zeros((4, 4)), np.zeros((4, 5)))
    with pytest.raises(DataError, match="2-D"):
        segmentation_metrics(np.zeros((2, 4, 4)), np.zeros((2, 4, 4)))
    with pytest.raises(DataError, match="spacing"):
        segmentation_metrics(np.zeros((4, 4)), np.zeros((4, 4)), spacing=(0.1, -1))


def test_batch_metrics_accepts_tensors_and_per_image_spacings():
    preds = torch.zeros(3, 1, 16, 16)
    targets = torch.zeros(3, 1, 16, 16)
    preds[0, 0, 2:8, 2:8] = 1
    targets[0, 0, 3:9, 2:8] = 1
    targets[1, 0, 4:6, 4:6] = 1
    rows = batch_segmentation_metrics(preds, targets, spacings=[(1.0, 1.0), None, (2.0, 2.0)])
    assert [r["empty_case"] for r in rows] == [None, "missed", "both_empty"]
    assert rows[0] == {**segmentation_metrics(preds[0, 0].numpy(), targets[0, 0].numpy(), 1.0)}
    assert "hd95_mm" not in rows[1] and rows[2]["hd95_mm"] == 0
    same = batch_segmentation_metrics(preds, targets, spacings=(0.5, 0.5))
    assert all("asd_mm" in r for r in same)
    with pytest.raises(DataError, match="image 0"):
        batch_segmentation_metrics(preds * 0.5, targets)


def test_fast_enough_on_256_images():
    yy, xx = np.mgrid[0:256, 0:256]
    pred = ((yy - 120) / 50) ** 2 + ((xx - 130) / 70) ** 2 <= 1
    target = ((yy - 128) / 45) ** 2 + ((xx - 120) / 75) ** 2 <= 1
    segmentation_metrics(pred, target)
    start = time.perf_counter()
    for _ in range(10):
        segmentation_metrics(pred, target)
    per_call = (time.perf_counter() - start) / 10
    assert per_call < 0.05  # ~5 ms on an idle core; generous bound for a shared machine


# ---------------------------------------------------------------- aggregation


def test_summarize_per_image_counts_empty_cases():
    a, b = square(20, 2, 2, 6), square(20, 3, 2, 6)
    empty = np.zeros((20, 20), bool)
    rows = [segmentation_metrics(a, b), segmentation_metrics(empty, b), segmentation_metrics(empty, empty)]
    summary = summarize_per_image(rows)
    assert summary["n"] == 3
    dices = [r["dice"] for r in rows]
    assert summary["dice_mean"] == pytest.approx(np.mean(dices))
    assert summary["dice_std"] == pytest.approx(np.std(dices, ddof=1))
    assert summary["hd95_mean"] == pytest.approx(np.mean([r["hd95"] for r in rows]))
    assert summary["empty_cases"] == {"missed": 1, "false_alarm": 0, "both_empty": 1}
    assert set(f"{m}_mean" for m in SEGMENTATION_METRICS) <= set(summary)


def test_summarize_per_image_refuses_missing_or_nan():
    rows = [segmentation_metrics(square(10, 1, 1, 3), square(10, 1, 1, 3))]
    with pytest.raises(DataError, match="hd95_mm"):
        summarize_per_image(rows, metrics=("hd95_mm",))
    with pytest.raises(DataError, match="nan"):
        summarize_per_image([{"id": "x", "dice": float("nan")}], metrics=("dice",))
    with pytest.raises(DataError):
        summarize_per_image([])


def test_summarize_folds_is_mean_of_fold_means():
    fold_rows = [
        [{"dice": 0.9, "empty_case": None}, {"dice": 0.7, "empty_case": None}],  # mean 0.8
        [{"dice": 0.6, "empty_case": None}],  # mean 0.6 (one image only)
        [{"dice": 1.0, "empty_case": "both_empty"}, {"dice": 0.4, "empty_case": None}],  # mean 0.7
    ]
    folds = [summarize_per_image(rows, metrics=("dice",)) for rows in fold_rows]
    assert math.isnan(folds[1]["dice_std"])
    result = summarize_folds(folds, metrics=("dice",))
    assert result["dice"]["folds"] == pytest.approx([0.8, 0.6, 0.7])
    assert result["dice"]["mean"] == pytest.approx(0.7)  # not the pooled mean 0.72 of 5 images
    assert result["dice"]["std"] == pytest.approx(0.1)
    with pytest.raises(DataError, match="iou_mean"):
        summarize_folds(folds, metrics=("iou",))


def test_format_mean_std():
    assert format_mean_std(0.81962, 0.02011) == "81.96 ± 2.01"
    assert format_mean_std(12.345, 1.5, scale=1, digits=1) == "12.3 ± 1.5"
    assert format_mean_std(0.5, float("nan")) == "50.00 ± n/a"


# ---------------------------------------------------------------- classification


def test_classification_agrees_with_sklearn():
    from sklearn.metrics import accuracy_score, f1_score, precision_score, recall_score, roc_auc_score

    rng = np.random.default_rng(3)
    y = rng.integers(0, 2, 60)
    prob = np.clip(0.3 * y + rng.uniform(0, 0.7, 60), 0, 1)
    m = classification_metrics(y, prob, threshold=0.5)
    pred = prob >= 0.5
    assert m["accuracy"] == pytest.approx(accuracy_score(y, pred))
    assert m["precision"] == pytest.approx(precision_score(y, pred))
    assert m["recall"] == m["sensitivity"] == pytest.approx(recall_score(y, pred))
    assert m["specificity"] == pytest.approx(recall_score(1 - y, ~pred))
    assert m["f1"] == pytest.approx(f1_score(y, pred))
    assert m["auc"] == pytest.approx(roc_auc_score(y, prob))
    assert m["tp"] + m["fp"] + m["tn"] + m["fn"] == m["n"] == 60 and m["notes"] == []


def test_classification_hand_case_threshold_and_ignored_labels():
    y = torch.tensor([1, 1, 0, 0, -1])
    prob = torch.tensor([0.9, 0.5, 0.5, 0.1, 0.99])
    m = classification_metrics(y, prob)  # 0.5 counts as malignant
    assert (m["tp"], m["fn"], m["fp"], m["tn"]) == (2, 0, 1, 1)
    assert m["n"] == 4 and m["n_ignored"] == 1
    assert m["specificity"] == 0.5 and m["precision"] == pytest.approx(2 / 3)
    assert m["auc"] == pytest.approx(0.875)  # 4 pairs: 3 won, one tie (0.5 vs 0.5) counts half


def test_classification_single_class_gives_nan_auc_with_note():
    m = classification_metrics([0, 0, 0], [0.2, 0.7, 0.1])
    assert math.isnan(m["auc"])
    assert m["recall"] == 0.0 and m["precision"] == 0.0  # no positives, zero division -> 0
    assert any("auc" in note for note in m["notes"]) and any("recall" in n for n in m["notes"])
    assert m["specificity"] == pytest.approx(2 / 3)


def test_classification_rejects_bad_inputs():
    with pytest.raises(DataError, match="labels"):
        classification_metrics([0, 2], [0.1, 0.2])
    with pytest.raises(DataError, match="probabilities"):
        classification_metrics([0, 1], [0.1, 1.2])
    with pytest.raises(DataError):
        classification_metrics([0, 1, 1], [0.1, 0.2])
    with pytest.raises(DataError, match="-1"):
        classification_metrics([-1, -1], [0.1, 0.2])
