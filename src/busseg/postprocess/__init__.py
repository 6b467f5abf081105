"""Post-processing of predicted masks (threshold, speck removal, k largest lesions, hole
filling, boundary smoothing), usable with any model's prediction; see :mod:`.mask`."""

from busseg.postprocess.mask import (
    PAPER_DEFAULT,
    PostprocessConfig,
    binarize,
    fill_mask_holes,
    keep_largest_components,
    postprocess_batch,
    postprocess_mask,
    remove_small_components,
    smooth_boundary,
)

__all__ = [
    "PAPER_DEFAULT",
    "PostprocessConfig",
    "binarize",
    "fill_mask_holes",
    "keep_largest_components",
    "postprocess_batch",
    "postprocess_mask",
    "remove_small_components",
    "smooth_boundary",
]
