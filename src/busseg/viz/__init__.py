"""Visual outputs: mask / heat-map overlays (one colour convention: true positive green,
false positive red, false negative blue) and PNG case figures and grids."""

from busseg.viz.figures import save_case_figure, save_overlay_grid
from busseg.viz.overlay import (
    FN_COLOR,
    FP_COLOR,
    MASK_COLOR,
    TP_COLOR,
    overlay_heatmap,
    overlay_mask,
    overlay_prediction,
    to_uint8_image,
)

__all__ = [
    "FN_COLOR",
    "FP_COLOR",
    "MASK_COLOR",
    "TP_COLOR",
    "overlay_heatmap",
    "overlay_mask",
    "overlay_prediction",
    "save_case_figure",
    "save_overlay_grid",
    "to_uint8_image",
]
