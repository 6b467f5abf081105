"""Batched augmentation of images and masks together, on whatever device holds them (kornia).

Augmentation acts on the **[0, 1] grey image before intensity normalisation** (the scanner's
display values), so that "gain", "brightness" or "gamma" mean the same thing for every model
whatever its normalisation (z-score, min-max, ImageNet), and geometric padding is black, as
outside an ultrasound field of view. The normalisation follows the augmentation (the training
task applies it per batch).

Why kornia: its ``kornia.augmentation`` transforms work on a whole batch ``[B, C, H, W]`` at
once on the batch's device, move masks with the images (nearest resampling for masks, intensity
transforms leave them alone), draw their random parameters from torch's generator, and are
small classes that one can subclass. MONAI's array transforms and batchgeneratorsv2 (nnU-Net's)
work one sample at a time and are built for loader workers on the CPU.

Reproducible and resumable: every batch is augmented under its own seed (the training task
derives it from the recipe seed, the epoch and the batch), inside :func:`torch.random.fork_rng`,
so that the draws depend only on that seed — a resumed run draws exactly what the uninterrupted
run drew — and the global random stream (dropout) is left untouched. Draws are made on the
batch's device: the same seed gives the same augmentation on the same kind of device.

Two families of recipe keys (``augmentation`` section):

- the papers' own keys, kept so that each paper recipe keeps its paper's augmentation:
  ``hflip``, ``vflip`` (probabilities), ``rotate`` (probability) with ``rotate_deg = [min,
  max]`` (absolute angle, random sign; ACSNet's 10-30 degrees), ``scale = [min, max]`` (zoom
  of every sample), ``brightness`` (maximum additive shift) and ``contrast`` (maximum relative
  change around the image mean) — the latter two applied to every sample;
- transforms given as ``{p: probability, ...parameters}`` mappings (see :data:`TRANSFORM_SCHEMAS`):
  nnU-Net's default pipeline (Isensee et al., Nat. Methods 2021, supplementary: rotation and
  scaling, Gaussian noise, Gaussian blur, multiplicative brightness, contrast, simulated low
  resolution, gamma, mirroring) and ultrasound's own (speckle, depth-dependent gain, dynamic
  range, field-of-view crop, elastic deformation).

``preset: robust`` fills in :data:`ROBUST_PRESET`; keys written next to it override the
preset's values (``{preset: robust, vflip: 0.5}``).
"""

from __future__ import annotations

import copy
import math
from typing import Any

import torch
import torch.nn.functional as F

from busseg.errors import ConfigError
from busseg.schema import NON_NEGATIVE, POSITIVE, PROBABILITY, Check, check_section, choice, is_number, number, pair

# kornia is imported lazily (in the pipeline builders): importing it costs ~1 s and most commands
# (predict, evaluate, report) never augment.

#: The ``robust`` preset: nnU-Net's default 2-D pipeline as the floor (probabilities and ranges
#: of nnU-Net v2's ``get_training_transforms``, intensities rescaled from z-scored to [0, 1]
#: images, where one standard deviation is about 0.2), plus ultrasound's own variations.
#: Deliberate departures from nnU-Net: rotation limited to +-15 degrees and no vertical flip
#: (the skin line stays at the top: depth is a physical axis in B-mode images).
ROBUST_PRESET: dict[str, Any] = {
    "hflip": 0.5,
    "fov_crop": {"p": 0.2, "area": [0.6, 1.0]},
    "affine": {"p": 0.2, "degrees": 15.0, "scale": [0.7, 1.4]},
    "elastic": {"p": 0.2, "spacing": 0.2, "magnitude": 0.015},
    "speckle": {"p": 0.3, "sigma": [0.05, 0.3], "grain": [0.5, 1.5]},
    "depth_gain": {"p": 0.3, "max_db": 6.0, "knots": 5},
    "dynamic_range": {"p": 0.3, "ratio": [0.67, 1.5]},
    "low_resolution": {"p": 0.25, "zoom": [0.5, 1.0]},
    "gaussian_blur": {"p": 0.2, "sigma": [0.5, 1.0]},
    "gaussian_noise": {"p": 0.1, "std": 0.03},
    "multiplicative_brightness": {"p": 0.15, "factor": [0.75, 1.25]},
    "contrast": {"p": 0.15, "factor": [0.75, 1.25]},
    "gamma": {"p": 0.3, "gamma": [0.7, 1.5]},
}
PRESETS = {"robust": ROBUST_PRESET}

#: The papers' keys, one check each (:mod:`busseg.schema`). ``contrast`` as a number is the
#: papers' form (maximum relative change); as a mapping it is nnU-Net's (``TRANSFORM_SCHEMAS``).
PAPER_SCHEMA: dict[str, Check] = {
    "hflip": PROBABILITY,
    "vflip": PROBABILITY,
    "rotate": PROBABILITY,
    "rotate_deg": pair(number(0, 180)),
    "scale": pair(number(0, 10, lo_open=True)),
    "brightness": number(0, 1),
    "contrast": number(0, 1, hi_open=True),
}
#: Mapping-valued transforms: their parameters, one check each; every mapping also takes ``p``
#: (probability per sample, default 1) and needs every parameter listed here.
TRANSFORM_SCHEMAS: dict[str, dict[str, Check]] = {
    "fov_crop": {"area": pair(number(0, 1, lo_open=True))},
    "affine": {"degrees": number(0, 180), "scale": pair(number(0, 10, lo_open=True))},
    "elastic": {"spacing": number(0, 1, lo_open=True), "magnitude": NON_NEGATIVE},
    "speckle": {"sigma": pair(NON_NEGATIVE), "grain": pair(POSITIVE)},
    "depth_gain": {"max_db": NON_NEGATIVE, "knots": number(2, integer=True)},
    "dynamic_range": {"ratio": pair(POSITIVE)},
    "low_resolution": {"zoom": pair(number(0, 1, lo_open=True))},
    "gaussian_blur": {"sigma": pair(POSITIVE)},
    "gaussian_noise": {"std": NON_NEGATIVE},
    "multiplicative_brightness": {"factor": pair(NON_NEGATIVE)},
    "contrast": {"factor": pair(NON_NEGATIVE)},
    "gamma": {"gamma": pair(POSITIVE)},
}


def _mapping(value: Any) -> str | None:
    return f"must be a mapping such as {{p: 0.2, ...}}, got {value!r}"  # only reached for a non-mapping


#: Every key an ``augmentation`` section may hold (a mapping-valued key's parameters are checked
#: against ``TRANSFORM_SCHEMAS``).
AUGMENTATION_SCHEMA: dict[str, Check] = {
    "preset": choice(*PRESETS),
    **{name: _mapping for name in TRANSFORM_SCHEMAS},
    **PAPER_SCHEMA,
}


def _is_transform(key: str, value: Any) -> bool:
    return key in TRANSFORM_SCHEMAS and isinstance(value, dict)


def resolve_augmentation(cfg: dict | None, source: str = "<recipe>") -> dict:
    """Check an ``augmentation`` section and return it with its preset expanded.

    Keys written next to ``preset`` override the preset's (a mapping key by key). Raises
    :class:`ConfigError` naming ``source`` and the key for an unknown key, parameter or preset, a
    value out of range or of the wrong kind, a reversed ``[min, max]`` pair or a missing parameter.
    Resolving a resolved section (with its ``preset`` name) returns it unchanged.
    """
    cfg = dict(cfg or {})
    check_section({k: v for k, v in cfg.items() if not _is_transform(k, v)}, AUGMENTATION_SCHEMA, "augmentation",
                  source)
    preset = cfg.pop("preset", None)
    out = copy.deepcopy(PRESETS[preset]) if preset else {}
    for key, value in cfg.items():
        out[key] = {**out[key], **value} if _is_transform(key, value) and isinstance(out.get(key), dict) \
            else copy.deepcopy(value)
    for key, value in out.items():
        if _is_transform(key, value):
            schema = TRANSFORM_SCHEMAS[key]
            check_section(value, {"p": PROBABILITY, **schema}, f"augmentation.{key}", source)
            missing = [name for name in schema if name not in value]
            if missing:
                raise ConfigError(f"{source}: augmentation.{key} misses parameter(s) {missing} "
                                  f"(it takes {', '.join(['p', *schema])})")
            value.setdefault("p", 1.0)
    return out


def describe_augmentation(cfg: dict | None) -> str:
    """A short label of an ``augmentation`` section for plans and tables: ``"robust"``,
    ``"robust (changed: hflip, speckle)"`` when keys next to the preset change it, ``"paper: hflip,
    rotate"`` (the recipe's own keys that do something) or ``"none"``."""
    resolved = resolve_augmentation(cfg)
    preset = (cfg or {}).get("preset")
    if preset:
        base = resolve_augmentation({"preset": preset})
        changed = sorted(k for k in {*base, *resolved} if base.get(k) != resolved.get(k))
        return f"{preset} (changed: {', '.join(changed)})" if changed else preset
    active = active_keys(resolved)
    return f"paper: {', '.join(active)}" if active else "none"


def active_keys(resolved: dict) -> list[str]:
    """The keys of a resolved section that change images: a transform with ``p > 0``, a paper
    probability or strength above 0, a ``scale`` range other than ``[1, 1]``."""
    return [k for k, v in resolved.items()
            if (isinstance(v, dict) and v.get("p", 0) > 0)
            or (k in ("hflip", "vflip", "rotate", "brightness", "contrast") and is_number(v) and v > 0)
            or (k == "scale" and [float(x) for x in v] != [1.0, 1.0])]


# ------------------------------------------------------------------ selected samples only


class SelectedSamplesOnly:
    """Mixin for kornia augmentations: on the CPU, transform only the samples drawn to be
    transformed.

    kornia transforms every sample and then keeps the drawn ones (a ``torch.where`` blend): on
    a GPU that avoids a host synchronisation per transform, on a CPU it wastes the work of every
    sample left alone — most of them, at nnU-Net's probabilities of 0.1-0.3. The random draws
    are untouched (they happen before, in ``generate_parameters``), so the output is the same."""

    def apply_transform(self, input, params, flags, transform=None):
        drawn = params.get("batch_prob")
        n = input.shape[0]
        if input.device.type != "cpu" or drawn is None or drawn.dim() != 1 or drawn.numel() != n:
            return super().apply_transform(input, params, flags, transform)
        selected = drawn > 0.5
        if bool(selected.all()):
            return super().apply_transform(input, params, flags, transform)
        out = input.clone()
        if not bool(selected.any()):
            return out
        rows = selected.nonzero().flatten()
        sub = {key: value[rows] if (isinstance(value, torch.Tensor) and value.dim() >= 1 and value.shape[0] == n
                                    and key != "forward_input_shape") else value
               for key, value in params.items()}
        if isinstance(transform, torch.Tensor) and transform.dim() >= 1 and transform.shape[0] == n:
            transform = transform[rows]
        out[rows] = super().apply_transform(input[rows], sub, flags, transform).to(out.dtype)
        return out


def _selected_only(cls):
    """``cls`` (a kornia augmentation class) with :class:`SelectedSamplesOnly` mixed in."""
    return type(cls.__name__, (SelectedSamplesOnly, cls), {"__doc__": cls.__doc__})


# ------------------------------------------------------------------ ultrasound's own transforms


def _kornia_intensity_base():
    from kornia.augmentation import IntensityAugmentationBase2D

    return IntensityAugmentationBase2D


def _uniform(lo: float, hi: float, n: int, device) -> torch.Tensor:
    return lo + (hi - lo) * torch.rand(n, device=device)


def _foreground_weight(image: torch.Tensor) -> torch.Tensor:
    """The field of view, softly: 1 where some pixel within about 4-8 % of the image side is
    brighter than 4 grey levels, 0 in the black outside a sector's field of view (and in
    padding), ramping over about 4 % between them.

    Changes of gain or dynamic range act on echoes; the black surround is not echo data and stays
    black. A per-pixel threshold instead would leave the darkest pixels of hypoechoic tissue
    black while their neighbours brighten: salt-and-pepper noise that no scanner makes (the rule
    of :func:`busseg.data.corruptions._echo_weight`). Computed on blocks of 4 % of the side
    (max-pooled), dilated by one block and interpolated back: a full-resolution max filter of
    that width costs 20 ms per 8 x 96^2 batch on one CPU core, this well under 1 ms."""
    h, w = image.shape[-2:]
    block = max(1, round(0.04 * min(h, w)))
    bright = (F.max_pool2d(image, block, stride=block, ceil_mode=True) > 4 / 255).to(image.dtype)
    near = F.max_pool2d(bright, 3, stride=1, padding=1)
    return F.interpolate(near, size=(h, w), mode="bilinear", align_corners=False)


def _smoothed_noise(noise: torch.Tensor, grain: torch.Tensor) -> torch.Tensor:
    """White noise ``[B, 1, H, W]`` smoothed by a Gaussian of std ``grain[b]`` pixels (the
    speckle grain: one resolution cell), scaled to unit variance per sample."""
    b, _, h, w = noise.shape
    device = noise.device
    radius = max(1, int(math.ceil(3 * float(grain.max()))))
    offsets = torch.arange(-radius, radius + 1, device=device, dtype=torch.float32)
    kernel = torch.exp(-0.5 * (offsets[None] / grain.to(device)[:, None].clamp_min(1e-3)) ** 2)
    kernel = kernel / kernel.sum(1, keepdim=True)  # [B, K]: one 1-D kernel per sample
    # separable per-sample filtering: the batch goes into the channel axis (groups = B)
    x = noise.reshape(1, b, h, w)
    x = F.conv2d(F.pad(x, (radius, radius, 0, 0), mode="reflect"), kernel[:, None, None, :], groups=b)
    x = F.conv2d(F.pad(x, (0, 0, radius, radius), mode="reflect"), kernel[:, None, :, None], groups=b)
    x = x.reshape(b, 1, h, w)
    return x / x.flatten(1).std(1).clamp_min(1e-6).view(b, 1, 1, 1)


def build_speckle(sigma, grain, p):
    """Multiplicative speckle-like noise: ``v' = clamp(v * (1 + s * n), 0, 1)``, ``n`` a
    unit-variance Gaussian field smoothed to the speckle grain (``grain`` px, one resolution
    cell), ``s`` drawn from ``sigma``. Speckle multiplies the echo amplitude (Goodman's fully
    developed speckle has a standard deviation proportional to its mean); a smoothed field rather
    than white noise because a speckle spot spans a resolution cell, not one pixel."""
    base = _kornia_intensity_base()

    class RandomSpeckle(SelectedSamplesOnly, base):
        def __init__(self) -> None:
            super().__init__(p=p)

        def generate_parameters(self, shape):
            n = shape[0]
            # the white noise is drawn here, for every sample, so that which samples are
            # transformed does not change the draws of the others
            return {"sigma": _uniform(*sigma, n, self.device), "grain": _uniform(*grain, n, self.device),
                    "noise": torch.randn(n, 1, *shape[-2:], device=self.device)}

        def apply_transform(self, input, params, flags, transform=None):
            field = _smoothed_noise(params["noise"], params["grain"])
            s = params["sigma"].to(input.device, input.dtype).view(-1, 1, 1, 1)
            return (input * (1 + s * field.to(input.device, input.dtype))).clamp(0.0, 1.0)

    return RandomSpeckle()


def build_depth_gain(max_db, knots, p, dynamic_range_db: float = 60.0):
    """Depth-dependent gain (time-gain compensation): ``v' = clamp(v + w(v) g(y) / DR, 0, 1)``.

    After log compression over a display dynamic range of ``DR`` dB (60 dB assumed), a gain of
    ``g`` dB adds ``g / DR`` to the displayed value. ``g(y)`` is linear between ``knots`` values
    drawn uniformly in ``[-max_db, max_db]`` along depth (rows; row 0 is the skin line), as the
    TGC sliders of a scanner set one gain per depth band. ``w(v)`` keeps black pixels black
    (see :func:`_foreground_weight`)."""
    base = _kornia_intensity_base()

    class RandomDepthGain(SelectedSamplesOnly, base):
        def __init__(self) -> None:
            super().__init__(p=p)

        def generate_parameters(self, shape):
            return {"knots_db": (torch.rand(shape[0], 1, knots, device=self.device) * 2 - 1) * max_db}

        def apply_transform(self, input, params, flags, transform=None):
            h = input.shape[-2]
            knots_db = params["knots_db"].to(input.device, input.dtype)
            gain = F.interpolate(knots_db, size=h, mode="linear", align_corners=True)  # [B, 1, H]
            offset = (gain / dynamic_range_db)[..., None]  # [B, 1, H, 1]
            return (input + _foreground_weight(input) * offset).clamp(0.0, 1.0)

    return RandomDepthGain()


def build_dynamic_range(ratio, p):
    """Change of the log-compression dynamic range: ``v' = clamp(1 - (1 - v) r, 0, 1)``.

    A pixel displayed at ``v`` over ``DR0`` dB lies ``(1 - v) DR0`` dB below the brightest echo;
    shown over ``DR1`` dB it is displayed at ``1 - (1 - v) DR0 / DR1``: ``r = DR0 / DR1`` > 1 is
    a narrower range (darker, harder image), < 1 a wider one (weak echoes lifted, flatter).
    ``r`` is drawn log-uniformly from ``ratio``; black stays black (:func:`_foreground_weight`)."""
    base = _kornia_intensity_base()
    lo, hi = math.log(ratio[0]), math.log(ratio[1])

    class RandomDynamicRange(SelectedSamplesOnly, base):
        def __init__(self) -> None:
            super().__init__(p=p)

        def generate_parameters(self, shape):
            return {"ratio": torch.exp(_uniform(lo, hi, shape[0], self.device))}

        def apply_transform(self, input, params, flags, transform=None):
            r = params["ratio"].to(input.device, input.dtype).view(-1, 1, 1, 1)
            remapped = (1 - (1 - input) * r).clamp(0.0, 1.0)
            return input + _foreground_weight(input) * (remapped - input)

    return RandomDynamicRange()


# ---------------------------------------------------- nnU-Net transforms that kornia lacks


def build_low_resolution(zoom, p):
    """nnU-Net's simulated low resolution: down-sample by a factor drawn from ``zoom``
    (nearest), up-sample back (bicubic), clamped to [0, 1]."""
    base = _kornia_intensity_base()

    class RandomLowResolution(SelectedSamplesOnly, base):
        def __init__(self) -> None:
            super().__init__(p=p)

        def generate_parameters(self, shape):
            return {"zoom": _uniform(*zoom, shape[0], self.device)}

        def apply_transform(self, input, params, flags, transform=None):
            h, w = input.shape[-2:]
            out = []
            # one interpolation pair per sample: each has its own factor (B is small)
            for sample, z in zip(input.split(1), params["zoom"].tolist()):
                small = F.interpolate(sample, size=(max(1, round(h * z)), max(1, round(w * z))), mode="nearest")
                out.append(F.interpolate(small, size=(h, w), mode="bicubic", align_corners=False))
            return torch.cat(out).clamp(0.0, 1.0)

    return RandomLowResolution()


def build_contrast(factor, p):
    """nnU-Net's contrast augmentation: ``v' = (v - mean) f + mean``, clipped to the image's
    own range (nnU-Net's ``preserve_range``), ``f`` drawn from ``factor``."""
    base = _kornia_intensity_base()

    class RandomContrastAroundMean(SelectedSamplesOnly, base):
        def __init__(self) -> None:
            super().__init__(p=p)

        def generate_parameters(self, shape):
            return {"factor": _uniform(*factor, shape[0], self.device)}

        def apply_transform(self, input, params, flags, transform=None):
            f = params["factor"].to(input.device, input.dtype).view(-1, 1, 1, 1)
            mean = input.mean(dim=(1, 2, 3), keepdim=True)
            lo = input.amin(dim=(1, 2, 3), keepdim=True)
            hi = input.amax(dim=(1, 2, 3), keepdim=True)
            return torch.maximum(torch.minimum((input - mean) * f + mean, hi), lo)

    return RandomContrastAroundMean()


def build_signed_rotation_scale(rotate_p, rotate_deg, scale):
    """The papers' rotation and scaling: every sample is zoomed by a factor from ``scale``; with
    probability ``rotate_p`` it is also rotated by an angle whose magnitude is uniform in
    ``rotate_deg`` and whose sign is random (ACSNet rotates by 10-30 degrees either way), one
    affine warp."""
    from kornia.augmentation import RandomAffine

    class RandomSignedRotationScale(SelectedSamplesOnly, RandomAffine):
        def __init__(self) -> None:
            super().__init__(degrees=0.0, scale=tuple(scale) if scale[0] != scale[1] else None, p=1.0,
                             padding_mode="zeros", align_corners=False)

        def generate_parameters(self, shape):
            params = super().generate_parameters(shape)
            n = shape[0]
            if scale[0] == scale[1]:
                params["scale"] = torch.full((n, 2), float(scale[0]), device=self.device)
            magnitude = _uniform(rotate_deg[0], rotate_deg[1], n, self.device)
            sign = torch.where(torch.rand(n, device=self.device) < 0.5, -1.0, 1.0)
            rotated = torch.rand(n, device=self.device) < rotate_p
            params["angle"] = torch.where(rotated, sign * magnitude, torch.zeros_like(magnitude))
            return params

    return RandomSignedRotationScale()


def build_elastic(spacing, magnitude, p):
    """Elastic deformation: a random displacement field, smooth at the scale of ``spacing``
    image sides, with a standard deviation of ``magnitude`` image sides per axis.

    The field is drawn on a coarse grid of control points ``spacing`` apart (independent
    normal displacements) and interpolated bicubically to every pixel — the control-point form
    of Simard et al.'s elastic distortion (ICDAR 2003), where a Gaussian-smoothed white-noise
    field would need a convolution with a kernel of several ``spacing`` at full resolution
    (kornia's ``RandomElasticTransform``: 0.3 s per 8 x 256^2 batch on one CPU core). Images are
    resampled bilinearly, masks with nearest neighbours (kornia's mask handling)."""
    from kornia.augmentation import RandomElasticTransform

    nodes = max(2, int(math.ceil(1.0 / spacing)) + 1)

    class RandomElasticDeformation(SelectedSamplesOnly, RandomElasticTransform):
        def __init__(self) -> None:
            super().__init__(align_corners=False, padding_mode="zeros", p=p)

        def generate_parameters(self, shape):
            # x2: displacements in normalised coordinates, where the image side spans 2
            return {"control": torch.randn(shape[0], 2, nodes, nodes, device=self.device) * (2 * magnitude)}

        def apply_transform(self, input, params, flags, transform=None):
            b, _, h, w = input.shape
            control = params["control"].to(input.device, input.dtype)
            field = F.interpolate(control, size=(h, w), mode="bicubic", align_corners=True)
            ys = torch.linspace(-1 + 1 / h, 1 - 1 / h, h, device=input.device, dtype=input.dtype)
            xs = torch.linspace(-1 + 1 / w, 1 - 1 / w, w, device=input.device, dtype=input.dtype)
            grid_y, grid_x = torch.meshgrid(ys, xs, indexing="ij")
            grid = torch.stack((grid_x, grid_y), -1)[None] + field.permute(0, 2, 3, 1)
            return F.grid_sample(input, grid, mode=flags["resample"].name.lower(),
                                 padding_mode=flags["padding_mode"], align_corners=False)

    return RandomElasticDeformation()


# ------------------------------------------------------------------------------ the pipeline


def _odd(n: float) -> int:
    k = max(3, int(math.ceil(n)))
    return k if k % 2 else k + 1


def build_pipeline(cfg: dict, size: tuple[int, int]) -> list:
    """The kornia transforms of a resolved ``augmentation`` section, for images of ``size``.

    Order: geometry (field of view, paper rotation/scale, affine, elastic, flips), then the
    acquisition chain (speckle, depth gain, dynamic range, resolution, blur, noise), then the
    display (brightness, contrast, gamma) — the order in which a scanner produces an image."""
    import kornia.augmentation as K

    h, w = size
    ops: list = []

    def on(key: str) -> dict | None:
        value = cfg.get(key)
        return value if isinstance(value, dict) and value.get("p", 0) > 0 else None

    if c := on("fov_crop"):
        ops.append(_selected_only(K.RandomResizedCrop)((h, w), scale=tuple(c["area"]), ratio=(0.8 * w / h, 1.25 * w / h),
                                       cropping_mode="resample", p=c["p"]))
    rotate = float(cfg.get("rotate", 0.0))
    scale = [float(v) for v in cfg.get("scale", [1.0, 1.0])]
    if rotate > 0 or scale != [1.0, 1.0]:
        ops.append(build_signed_rotation_scale(rotate, [float(v) for v in cfg.get("rotate_deg", [0, 0])], scale))
    if c := on("affine"):
        ops.append(_selected_only(K.RandomAffine)(degrees=float(c["degrees"]), scale=tuple(c["scale"]), padding_mode="zeros",
                                  align_corners=False, p=c["p"]))
    if c := on("elastic"):
        ops.append(build_elastic(c["spacing"], c["magnitude"], c["p"]))
    if cfg.get("hflip", 0) > 0:
        ops.append(_selected_only(K.RandomHorizontalFlip)(p=float(cfg["hflip"])))
    if cfg.get("vflip", 0) > 0:
        ops.append(_selected_only(K.RandomVerticalFlip)(p=float(cfg["vflip"])))
    if c := on("speckle"):
        ops.append(build_speckle(c["sigma"], c["grain"], c["p"]))
    if c := on("depth_gain"):
        ops.append(build_depth_gain(float(c["max_db"]), int(c["knots"]), c["p"]))
    if c := on("dynamic_range"):
        ops.append(build_dynamic_range(c["ratio"], c["p"]))
    if c := on("low_resolution"):
        ops.append(build_low_resolution(c["zoom"], c["p"]))
    if c := on("gaussian_blur"):
        ops.append(_selected_only(K.RandomGaussianBlur)((_odd(6 * c["sigma"][1] + 1),) * 2, tuple(c["sigma"]), p=c["p"]))
    if c := on("gaussian_noise"):
        ops.append(_selected_only(K.RandomGaussianNoise)(std=float(c["std"]), p=c["p"]))
    if cfg.get("brightness", 0) > 0:  # the papers' additive shift, every sample
        b = float(cfg["brightness"])
        ops.append(_selected_only(K.RandomBrightness)((1 - b, 1 + b), clip_output=True, p=1.0))
    if c := on("multiplicative_brightness"):
        # kornia's "contrast" multiplies pixel values: nnU-Net's multiplicative brightness
        ops.append(_selected_only(K.RandomContrast)(tuple(c["factor"]), clip_output=True, p=c["p"]))
    contrast = cfg.get("contrast")
    if is_number(contrast) and contrast > 0:
        ops.append(build_contrast([1 - contrast, 1 + contrast], 1.0))
    elif c := on("contrast"):
        ops.append(build_contrast(c["factor"], c["p"]))
    if c := on("gamma"):
        ops.append(_selected_only(K.RandomGamma)(tuple(c["gamma"]), p=c["p"]))
    return ops


class BatchAugmenter:
    """Recipe-driven augmentation of a batch ``image [B,C,H,W]`` in [0, 1], ``mask [B,1,H,W]``.

    ``BatchAugmenter.from_recipe(recipe["augmentation"])``; ``augmenter(image, mask, seed)``
    returns the augmented pair, a function of ``seed`` alone (see the module docstring). Masks
    follow every geometric transform with nearest resampling and stay binary; images stay in
    [0, 1].
    """

    def __init__(self, cfg: dict | None = None, source: str = "<recipe>") -> None:
        self.cfg = resolve_augmentation(cfg, source)
        self._pipelines: dict[tuple, Any] = {}

    @classmethod
    def from_recipe(cls, cfg: dict | None) -> "BatchAugmenter":
        return cls(cfg)

    @property
    def enabled(self) -> bool:
        return bool(active_keys(self.cfg))

    def pipeline(self, size: tuple[int, int], device: torch.device):
        key = (tuple(size), str(device))
        if key not in self._pipelines:
            from kornia.augmentation import AugmentationSequential

            seq = AugmentationSequential(*build_pipeline(self.cfg, tuple(size)), data_keys=["input", "mask"])
            self._pipelines[key] = seq.to(device)  # random draws on the batch's device
        return self._pipelines[key]

    def __call__(self, image: torch.Tensor, mask: torch.Tensor, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
        if not self.enabled:
            return image, mask
        dtype = image.dtype
        seq = self.pipeline(tuple(image.shape[-2:]), image.device)
        devices = [image.device] if image.device.type == "cuda" else []
        with torch.random.fork_rng(devices=devices):
            torch.manual_seed(int(seed) % (2**63))
            out_image, out_mask = seq(image.float(), mask.float())
        return out_image.clamp(0.0, 1.0).to(dtype), (out_mask > 0.5).to(mask.dtype)
