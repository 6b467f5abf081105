"""Post-processing of predicted lesion masks (the "processed mask" of Guo 2025, section 5).

Guo (ICSEML 2025) §5 shows "processed masks" with "smoother boundaries and more regular
shapes, which help eliminate noise and edge artifacts present in the raw predictions", but does
not say how they were obtained. This module provides the usual steps, each optional, for the
prediction of ANY model, in this fixed order:

1. **threshold** — ``probability > threshold`` (a probability exactly at the threshold, i.e.
   logit 0, counts as background). Boolean / {0, 1} integer masks skip this step.
2. **smoothing** (``smooth_radius`` r > 0) — morphological opening then closing with a disk of
   radius r (scikit-image ``disk``): the opening removes speckle-sized specks and thin spurs,
   the closing fills notches and thin gaps in the boundary. The mask is padded by edge
   replication before each operation so that lesions touching the image border are not eroded
   by the implicit background outside the image.
3. **small-component removal** (``min_component_px`` > 0) — connected components with fewer
   pixels are deleted.
4. **keep the k largest** (``keep_largest`` = k) — only the k largest components remain (ties
   keep the component found first in raster order).
5. **hole filling** (``fill_holes``) — background regions not connected to the image border
   become foreground (SciPy ``binary_fill_holes``).

Smoothing comes first so that the component steps see the cleaned shapes (an opening can
split a component or leave a fragment, which steps 3-4 then remove); holes are filled last so
the output has none. Components use ``connectivity`` 2 (8-neighbourhood) by default; holes use
the complementary 4-neighbourhood, so a diagonal gap in a ring does not open a hole.

Sizes (``min_component_px``, ``smooth_radius``) are in pixels of the mask passed in, unless
``reference_size`` is set: then they are given for a ``reference_size``² image and scaled to the
actual mask (areas by s², the radius by s, s = sqrt(H·W) / reference_size, rounded half up), so
one preset means the same at 64² and at 512² (evaluation runs at the model's input size). A step
may empty a mask (e.g. one small true lesion); that is the configured behaviour and is not
hidden.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, fields, replace
from typing import Any, ClassVar, Mapping

import numpy as np
from scipy import ndimage
from skimage.morphology import disk

from busseg.errors import ConfigError, DataError


@dataclass(frozen=True)
class PostprocessConfig:
    """Which post-processing steps run, and their parameters (each step is off at its neutral
    value: ``min_component_px=0``, ``keep_largest=None``, ``fill_holes=False``,
    ``smooth_radius=0``). ``enabled=False`` turns every step but the threshold off."""

    threshold: float = 0.5
    min_component_px: int = 0
    keep_largest: int | None = None
    fill_holes: bool = False
    smooth_radius: int = 0
    connectivity: int = 2
    reference_size: int | None = None
    enabled: bool = True

    #: The preset used for the paper's "processed mask" (Guo §5 gives no parameters), stated
    #: for 256×256 masks and scaled to others (``reference_size=256``): drop specks under
    #: 100 px (0.15 % of the image, about an 11-px disc), smooth the boundary with a radius-2
    #: disk, fill holes. ``keep_largest`` stays off because some BUSI images have two lesions
    #: (``_mask_1`` files).
    PAPER_DEFAULT: ClassVar["PostprocessConfig"]
    #: Thresholding only (the raw prediction).
    RAW: ClassVar["PostprocessConfig"]

    def __post_init__(self) -> None:
        def bad(name: str, why: str) -> ConfigError:
            return ConfigError(f"postprocess: {name}={getattr(self, name)!r} {why}")

        if isinstance(self.threshold, bool) or not isinstance(self.threshold, (int, float)):
            raise bad("threshold", "must be a number in (0, 1)")
        if not 0.0 < float(self.threshold) < 1.0:
            raise bad("threshold", "must lie strictly between 0 and 1")
        for name in ("min_component_px", "smooth_radius"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < 0:
                raise bad(name, "must be a non-negative integer (pixels)")
        if self.keep_largest is not None and (
            isinstance(self.keep_largest, bool)
            or not isinstance(self.keep_largest, (int, np.integer))
            or self.keep_largest < 1
        ):
            raise bad("keep_largest", "must be None (off) or a positive integer k")
        if self.reference_size is not None and (
            isinstance(self.reference_size, bool)
            or not isinstance(self.reference_size, (int, np.integer))
            or self.reference_size < 1
        ):
            raise bad("reference_size", "must be None (sizes in pixels) or a positive image side")
        if self.connectivity not in (1, 2):
            raise bad("connectivity", "must be 1 (4-neighbourhood) or 2 (8-neighbourhood)")
        for name in ("fill_holes", "enabled"):
            if not isinstance(getattr(self, name), bool):
                raise bad(name, "must be true or false")

    @classmethod
    def from_dict(cls, d: Mapping[str, Any] | None) -> "PostprocessConfig":
        """Build from a recipe / CLI mapping. ``{"preset": "paper"}`` (or ``"raw"``) starts from
        a preset; the other keys override it. ``None`` or ``{}`` gives the default."""
        if d is None:
            return cls()
        if isinstance(d, PostprocessConfig):
            return d
        if not isinstance(d, Mapping):
            raise ConfigError(f"postprocess: expected a mapping of options, got {d!r}")
        options = dict(d)
        preset_name = options.pop("preset", None)
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(options) - known)
        if unknown:
            raise ConfigError(
                f"postprocess: unknown option(s) {', '.join(unknown)}; "
                f"known: preset, {', '.join(sorted(known))}"
            )
        base = cls() if preset_name is None else cls.preset(preset_name)
        return replace(base, **options)

    @classmethod
    def preset(cls, name: str) -> "PostprocessConfig":
        presets = {"paper": cls.PAPER_DEFAULT, "raw": cls.RAW}
        if name not in presets:
            raise ConfigError(f"postprocess: unknown preset {name!r}; known: {', '.join(presets)}")
        return presets[name]

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @property
    def is_identity(self) -> bool:
        """True when only the threshold is applied."""
        return not self.enabled or (
            self.min_component_px == 0
            and self.keep_largest is None
            and not self.fill_holes
            and self.smooth_radius == 0
        )

    def pixel_sizes(self, shape: tuple[int, int]) -> tuple[int, int]:
        """``(min_component_px, smooth_radius)`` for a mask of ``shape`` (scaled when
        ``reference_size`` is set)."""
        if self.reference_size is None:
            return int(self.min_component_px), int(self.smooth_radius)
        scale = math.sqrt(shape[0] * shape[1]) / self.reference_size
        return (
            int(math.floor(self.min_component_px * scale**2 + 0.5)),
            int(math.floor(self.smooth_radius * scale + 0.5)),
        )

    def describe(self) -> str:
        """One line for reports, e.g. ``threshold 0.5; smooth r=2; remove <100 px; fill holes``."""
        parts = [f"threshold {self.threshold:g}"]
        if not self.is_identity:
            if self.smooth_radius:
                parts.append(f"open+close disk r={self.smooth_radius}")
            if self.min_component_px:
                parts.append(f"remove components <{self.min_component_px} px")
            if self.keep_largest is not None:
                parts.append(f"keep {self.keep_largest} largest")
            if self.fill_holes:
                parts.append("fill holes")
            if self.reference_size is not None:
                parts.append(f"sizes for {self.reference_size}x{self.reference_size}")
        return "; ".join(parts)


PostprocessConfig.PAPER_DEFAULT = PostprocessConfig(
    threshold=0.5,
    min_component_px=100,
    keep_largest=None,
    fill_holes=True,
    smooth_radius=2,
    reference_size=256,
)
PostprocessConfig.RAW = PostprocessConfig()
PAPER_DEFAULT = PostprocessConfig.PAPER_DEFAULT


def binarize(prob_or_mask: np.ndarray, threshold: float = 0.5) -> np.ndarray:
    """Boolean ``[H, W]`` mask from probabilities in [0, 1] (``> threshold``) or from a
    boolean / {0, 1} mask. ``[1, H, W]`` is accepted. Logits (values outside [0, 1]) are an
    error: apply a sigmoid first."""
    array = np.asarray(prob_or_mask)
    if array.ndim == 3 and array.shape[0] == 1:
        array = array[0]
    if array.ndim != 2:
        raise DataError(f"postprocess: expected a 2-D mask [H, W], got shape {array.shape}")
    if array.dtype == bool:
        return array.copy()
    if np.issubdtype(array.dtype, np.integer):
        if array.size and (array.min() < 0 or array.max() > 1):
            raise DataError(
                "postprocess: integer masks must hold 0/1 values, got range "
                f"[{array.min()}, {array.max()}] (0/255 masks: divide by 255 first)"
            )
        return array.astype(bool)
    if not np.issubdtype(array.dtype, np.floating):
        raise DataError(f"postprocess: unsupported mask dtype {array.dtype}")
    if array.size and (not np.isfinite(array).all() or array.min() < 0.0 or array.max() > 1.0):
        raise DataError(
            "postprocess: probabilities must be finite and in [0, 1], got range "
            f"[{np.nanmin(array):.3g}, {np.nanmax(array):.3g}] (logits? apply a sigmoid first)"
        )
    return array > threshold


def smooth_boundary(mask: np.ndarray, radius: int) -> np.ndarray:
    """Opening then closing with a disk of ``radius`` (edge-replicated padding, see module
    docstring)."""
    if radius <= 0 or not mask.any():
        return mask.copy()
    footprint = disk(radius).astype(bool)
    padded = np.pad(mask, radius, mode="edge")
    padded = ndimage.binary_opening(padded, structure=footprint)
    padded = np.pad(padded[radius:-radius, radius:-radius], radius, mode="edge")
    padded = ndimage.binary_closing(padded, structure=footprint)
    return padded[radius:-radius, radius:-radius]


def _label(mask: np.ndarray, connectivity: int) -> tuple[np.ndarray, np.ndarray]:
    """Component labels and sizes (``sizes[i]`` = pixels of label i + 1)."""
    structure = ndimage.generate_binary_structure(2, connectivity)
    labels, count = ndimage.label(mask, structure=structure)
    sizes = np.bincount(labels.ravel(), minlength=count + 1)[1:]
    return labels, sizes


def remove_small_components(mask: np.ndarray, min_px: int, connectivity: int = 2) -> np.ndarray:
    """Delete connected components with fewer than ``min_px`` pixels."""
    if min_px <= 0 or not mask.any():
        return mask.copy()
    labels, sizes = _label(mask, connectivity)
    keep = np.concatenate([[False], sizes >= min_px])
    return keep[labels]


def keep_largest_components(mask: np.ndarray, k: int, connectivity: int = 2) -> np.ndarray:
    """Keep the ``k`` largest connected components (ties: the first in raster order)."""
    if not mask.any():
        return mask.copy()
    labels, sizes = _label(mask, connectivity)
    if len(sizes) <= k:
        return mask.copy()
    order = np.argsort(-sizes, kind="stable")[:k]
    keep = np.zeros(len(sizes) + 1, bool)
    keep[order + 1] = True
    return keep[labels]


def fill_mask_holes(mask: np.ndarray) -> np.ndarray:
    """Fill background regions enclosed by the mask (not connected to the image border)."""
    return ndimage.binary_fill_holes(mask)


def postprocess_mask(prob_or_mask: np.ndarray, config: PostprocessConfig | None = None) -> np.ndarray:
    """Threshold and clean one predicted mask; returns a new boolean ``[H, W]`` array.

    ``prob_or_mask``: probabilities in [0, 1] (not logits), or a boolean / {0, 1} mask,
    ``[H, W]`` or ``[1, H, W]``. The steps and their order are in the module docstring.
    """
    config = config or PostprocessConfig()
    mask = binarize(prob_or_mask, config.threshold)
    if config.is_identity:
        return mask
    min_component_px, smooth_radius = config.pixel_sizes(mask.shape)
    mask = smooth_boundary(mask, smooth_radius)
    mask = remove_small_components(mask, min_component_px, config.connectivity)
    if config.keep_largest is not None:
        mask = keep_largest_components(mask, config.keep_largest, config.connectivity)
    if config.fill_holes:
        mask = fill_mask_holes(mask)
    return mask


def postprocess_batch(
    probs: np.ndarray, config: PostprocessConfig | None = None
) -> np.ndarray:
    """:func:`postprocess_mask` over a batch ``[B, H, W]`` or ``[B, 1, H, W]`` (NumPy or CPU
    tensor); returns boolean ``[B, H, W]``."""
    array = np.asarray(probs)
    if array.ndim == 4 and array.shape[1] == 1:
        array = array[:, 0]
    if array.ndim != 3:
        raise DataError(
            f"postprocess: expected a batch [B, H, W] or [B, 1, H, W], got shape {array.shape}"
        )
    return np.stack([postprocess_mask(item, config) for item in array]) if len(array) else (
        np.zeros(array.shape, bool)
    )

