"""Metrics: per-image segmentation metrics, their aggregation, classification metrics.

- ``segmentation``    Dice, IoU, precision, recall, specificity, accuracy, HD95, ASD of one
                      image, with one documented empty-mask policy (no case is dropped)
- ``aggregate``       per-image means within a fold, mean ± std across folds, formatting
- ``classification``  benign/malignant metrics (malignant positive), NaN-safe AUC
"""

from busseg.metrics.aggregate import format_mean_std, summarize_folds, summarize_per_image
from busseg.metrics.classification import CLASSIFICATION_METRICS, classification_metrics
from busseg.metrics.segmentation import (
    EMPTY_CASES,
    SEGMENTATION_METRICS,
    batch_segmentation_metrics,
    segmentation_metrics,
)

__all__ = [
    "CLASSIFICATION_METRICS",
    "EMPTY_CASES",
    "SEGMENTATION_METRICS",
    "batch_segmentation_metrics",
    "classification_metrics",
    "format_mean_std",
    "segmentation_metrics",
    "summarize_folds",
    "summarize_per_image",
]
