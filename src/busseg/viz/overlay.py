"""Mask and heat-map overlays on ultrasound images: ONE colour convention for all of busseg.

Prediction compared with a ground truth (every figure, report and CLI uses these colours):

- true positive (predicted and annotated)  — green ``TP_COLOR``
- false positive (predicted, not annotated) — red ``FP_COLOR``
- false negative (annotated, missed)        — blue ``FN_COLOR``

A single mask shown alone (a ground truth, or a prediction without a reference) is drawn in
``MASK_COLOR`` (amber), so that green always means "correct" and never just "predicted".
Filled regions are alpha-blended over the grayscale image and their outline is drawn opaque,
so thin misses stay visible.
"""

from __future__ import annotations

import numpy as np
from matplotlib import colormaps
from skimage.segmentation import find_boundaries
from skimage.transform import resize

from busseg.errors import DataError

TP_COLOR = (0, 200, 0)
FP_COLOR = (220, 0, 0)
FN_COLOR = (0, 80, 255)
MASK_COLOR = (255, 190, 0)
#: matplotlib colormap of attention / probability heat maps.
HEATMAP_CMAP = "jet"


def to_uint8_image(image: np.ndarray) -> np.ndarray:
    """Display copy of an image as uint8 ``[H, W]`` or ``[H, W, 3]``.

    uint8 is kept; bool becomes 0/255; floats in [0, 1] are scaled by 255; any other range is
    min-max rescaled. ``[1, H, W]``, ``[3, H, W]`` (channel first) and ``[H, W, 1]`` are
    accepted; RGBA drops alpha."""
    array = np.asarray(image)
    if array.ndim == 3 and array.shape[0] == 1:
        array = array[0]
    elif array.ndim == 3 and array.shape[0] == 3 and array.shape[-1] not in (3, 4):
        array = np.moveaxis(array, 0, -1)
    if array.ndim == 3 and array.shape[-1] == 1:
        array = array[..., 0]
    if array.ndim == 3 and array.shape[-1] == 4:
        array = array[..., :3]
    if array.ndim not in (2, 3) or (array.ndim == 3 and array.shape[-1] != 3):
        raise DataError(f"viz: expected an image [H, W] or [H, W, 3], got shape {array.shape}")
    if array.dtype == np.uint8:
        return array.copy()
    if array.dtype == bool:
        return array.astype(np.uint8) * 255
    values = array.astype(np.float64)
    if not np.isfinite(values).all():
        raise DataError("viz: image contains NaN or infinite values")
    low, high = float(values.min()), float(values.max())
    if not (low >= 0.0 and high <= 1.0):
        values = (values - low) / (high - low) if high > low else np.zeros_like(values)
    return np.round(values * 255.0).astype(np.uint8)


def to_rgb(image_u8: np.ndarray) -> np.ndarray:
    image = to_uint8_image(image_u8)
    return np.repeat(image[..., None], 3, axis=-1) if image.ndim == 2 else image


def as_mask(mask: np.ndarray, shape: tuple[int, int], what: str) -> np.ndarray:
    """Boolean ``[H, W]`` mask of the image's ``shape``: bool or {0,1}/{0,255} integers kept,
    floats (probabilities) thresholded at 0.5."""
    array = np.asarray(mask)
    if array.ndim == 3 and array.shape[0] == 1:
        array = array[0]
    if array.shape != tuple(shape):
        raise DataError(f"viz: {what} has shape {array.shape}, the image is {tuple(shape)}")
    if array.dtype == bool:
        return array
    if np.issubdtype(array.dtype, np.floating):
        return array > 0.5
    return array > 0


def _blend(rgb: np.ndarray, region: np.ndarray, color: tuple[int, int, int], alpha: float) -> None:
    if region.any():
        rgb[region] = (1.0 - alpha) * rgb[region] + alpha * np.asarray(color, np.float64)


def overlay_mask(
    image_u8: np.ndarray,
    mask: np.ndarray,
    color: tuple[int, int, int] = MASK_COLOR,
    alpha: float = 0.45,
    outline: bool = True,
) -> np.ndarray:
    """One mask over the image: filled with ``color`` at ``alpha`` and outlined (RGB uint8).

    A grayscale uint8 image (the common case, e.g. ``busseg predict`` on full-size scans) takes
    a fast path with the same pixels: the blend of a gray level is a function of that level
    alone, so it is a 256-entry table, and only the lesion's bounding box is touched."""
    image = np.asarray(image_u8)
    if image.dtype == np.uint8 and image.ndim == 2:
        return _overlay_mask_gray_u8(image, as_mask(mask, image.shape, "mask"), color, alpha, outline)
    rgb = to_rgb(image_u8).astype(np.float64)
    region = as_mask(mask, rgb.shape[:2], "mask")
    _blend(rgb, region, color, alpha)
    if outline and region.any():
        rgb[find_boundaries(region, mode="inner")] = color
    return np.round(rgb).astype(np.uint8)


def _overlay_mask_gray_u8(
    gray: np.ndarray, region: np.ndarray, color: tuple[int, int, int], alpha: float, outline: bool
) -> np.ndarray:
    rgb = np.repeat(gray[..., None], 3, axis=-1)
    if not region.any():
        return rgb
    levels = np.arange(256, dtype=np.float64)[:, None]
    table = np.round((1.0 - alpha) * levels + alpha * np.asarray(color, np.float64)).astype(np.uint8)
    rows, cols = np.flatnonzero(region.any(axis=1)), np.flatnonzero(region.any(axis=0))
    top, bottom = max(rows[0] - 1, 0), min(rows[-1] + 2, region.shape[0])
    left, right = max(cols[0] - 1, 0), min(cols[-1] + 2, region.shape[1])
    box, out = region[top:bottom, left:right], rgb[top:bottom, left:right]
    out[box] = table[gray[top:bottom, left:right][box]]
    if outline:
        out[find_boundaries(box, mode="inner")] = color
    return rgb


def overlay_prediction(
    image_u8: np.ndarray,
    pred: np.ndarray,
    target: np.ndarray | None = None,
    alpha: float = 0.45,
) -> np.ndarray:
    """Prediction over the image, RGB uint8 ``[H, W, 3]``.

    With ``target``: true positives green, false positives red, false negatives blue (filled at
    ``alpha``), with the ground-truth outline drawn in the false-negative blue and the
    prediction outline in green wherever it is correct and red elsewhere. Without ``target``:
    the prediction filled and outlined in ``MASK_COLOR``."""
    if not 0.0 <= alpha <= 1.0:
        raise DataError(f"viz: alpha must lie in [0, 1], got {alpha}")
    rgb = to_rgb(image_u8).astype(np.float64)
    shape = rgb.shape[:2]
    predicted = as_mask(pred, shape, "prediction")
    if target is None:
        return overlay_mask(image_u8, predicted, MASK_COLOR, alpha)
    annotated = as_mask(target, shape, "ground truth")
    _blend(rgb, predicted & annotated, TP_COLOR, alpha)
    _blend(rgb, predicted & ~annotated, FP_COLOR, alpha)
    _blend(rgb, ~predicted & annotated, FN_COLOR, alpha)
    if annotated.any():
        rgb[find_boundaries(annotated, mode="inner") & ~predicted] = FN_COLOR
    if predicted.any():
        edge = find_boundaries(predicted, mode="inner")
        rgb[edge & annotated] = TP_COLOR
        rgb[edge & ~annotated] = FP_COLOR
    return np.round(rgb).astype(np.uint8)


def overlay_heatmap(
    image_u8: np.ndarray,
    heat: np.ndarray,
    alpha: float = 0.5,
    cmap: str = HEATMAP_CMAP,
) -> np.ndarray:
    """Heat map in [0, 1] (attention coefficients, probabilities) over the image, RGB uint8.

    ``heat`` may be coarser than the image (an attention gate's grid): it is resized bilinearly
    to the image size. Values are clipped to [0, 1], not rescaled, so maps stay comparable
    across images."""
    if not 0.0 <= alpha <= 1.0:
        raise DataError(f"viz: alpha must lie in [0, 1], got {alpha}")
    rgb = to_rgb(image_u8).astype(np.float64)
    values = np.asarray(heat, dtype=np.float64)
    while values.ndim > 2 and values.shape[0] == 1:
        values = values[0]
    if values.ndim != 2:
        raise DataError(f"viz: heat map must be [H, W], got shape {np.shape(heat)}")
    if not np.isfinite(values).all():
        raise DataError("viz: heat map contains NaN or infinite values")
    if values.shape != rgb.shape[:2]:
        values = resize(values, rgb.shape[:2], order=1, mode="edge", anti_aliasing=False)
    colours = colormaps[cmap](np.clip(values, 0.0, 1.0))[..., :3] * 255.0
    return np.round((1.0 - alpha) * rgb + alpha * colours).astype(np.uint8)


__all__ = [
    "FN_COLOR",
    "FP_COLOR",
    "HEATMAP_CMAP",
    "MASK_COLOR",
    "TP_COLOR",
    "as_mask",
    "overlay_heatmap",
    "overlay_mask",
    "overlay_prediction",
    "to_rgb",
    "to_uint8_image",
]
