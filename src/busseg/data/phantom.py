"""Synthetic B-mode breast ultrasound phantoms with exact lesion masks and labels.

The phantoms are the embedded default data of the demo and of most tests: small, seeded,
deterministic and generated in milliseconds, yet not solvable by a fixed intensity threshold,
so that a segmentation model has something to learn.

Image formation (each step a simplification of B-mode physics, chosen for speed):

1. **Tissue layers** (echogenicity map ``E``): a bright skin line, hypoechoic subcutaneous fat,
   echogenic fibroglandular tissue and a deeper muscle band with oblique striations; layer
   boundaries are smooth random curves.
2. **Distractors**: hypoechoic fat lobules (ovals as dark as a lesion's rim) scattered in the
   fat and glandular layers, and one or two darker lobules per image — a global threshold
   that finds the lesion also finds them.
3. **One hypoechoic lesion** per image inside the glandular layer:
   - *benign*: oval, smooth, wider than tall; with probability 0.5 a thin echogenic rim
     (capsule) and with probability 0.6 posterior acoustic enhancement (brighter band below);
   - *malignant*: irregular boundary (several random harmonics of the radius) and with
     probability 0.6 spiculations (narrow radial spikes), taller than wide, posterior acoustic
     shadowing (a dark, slightly widening band below the lesion).
4. **Speckle**: fully developed speckle is the magnitude of a circular complex Gaussian field;
   smoothing the complex field with an anisotropic Gaussian (lateral wider than axial, as the
   lateral resolution of a linear probe is worse) gives correlated, Rayleigh-distributed
   multiplicative noise.
5. **Depth attenuation** ``exp(-alpha * depth)`` with random ``alpha``, a smooth random gain
   along depth (time-gain compensation) and across the probe (uneven contact), a random overall
   gain, then log compression to 8 bits, as a scanner display does.

The mask is exactly the lesion region used in step 3 (pixel centres inside the lesion
boundary), so Dice against it is exact. Every image is generated from its own seed
``(seed, index)``, so image ``i`` is the same whatever ``n``; labels follow a 2-malignant-in-5
pattern shuffled per block of five (40 % malignant, close to BUSI's 33 %).
"""

from __future__ import annotations

import csv
import os
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image
from scipy.ndimage import gaussian_filter

from busseg.errors import ConfigError, DataError

PHANTOM_FORMAT = "busseg-phantom/1"


@dataclass
class PhantomSet:
    """``images`` uint8 ``[N, S, S]``, ``masks`` uint8 0/1 ``[N, S, S]``, ``labels`` per image."""

    images: np.ndarray
    masks: np.ndarray
    labels: list[str]

    def __len__(self) -> int:
        return len(self.labels)


def _smooth_curve(rng: np.random.Generator, x: np.ndarray, amplitude: float, n_waves: int = 3) -> np.ndarray:
    """A random smooth 1-D curve (sum of low-frequency sines) over ``x`` in [0, 1]."""
    curve = np.zeros_like(x)
    for k in range(1, n_waves + 1):
        curve += rng.uniform(-1, 1) / k * np.sin(2 * np.pi * (k * x * rng.uniform(0.5, 1.0) + rng.uniform()))
    return amplitude * curve


def _window(cy: float, cx: float, half: float, size: int) -> tuple[slice, slice]:
    """Pixel window of half-width ``half`` (image units) around (cy, cx), clipped to the image."""
    lo_y, hi_y = int(max(0, np.floor((cy - half) * size))), int(min(size, np.ceil((cy + half) * size) + 1))
    lo_x, hi_x = int(max(0, np.floor((cx - half) * size))), int(min(size, np.ceil((cx + half) * size) + 1))
    return slice(lo_y, max(lo_y, hi_y)), slice(lo_x, max(lo_x, hi_x))


def _polar(yy, xx, cy, cx, ry, rx, angle):
    """Normalised radius (1 on the ellipse of semi-axes ry, rx rotated by ``angle``) and angle."""
    c, s = np.cos(angle), np.sin(angle)
    dy, dx = yy - cy, xx - cx
    u = (c * dx + s * dy) / rx
    v = (-s * dx + c * dy) / ry
    return np.sqrt(u * u + v * v), np.arctan2(v, u)


_THETA = np.linspace(-np.pi, np.pi, 721)


def _lesion_radius(rng: np.random.Generator, malignant: bool) -> np.ndarray:
    """Boundary radius r(theta) on ``_THETA``, in units of the lesion's semi-axes (1 = ellipse).

    Evaluated on a 1-D angle grid and interpolated per pixel (``np.interp``), which is much
    cheaper than evaluating the harmonics at every pixel.
    """
    theta = _THETA
    radius = np.ones_like(theta)
    if not malignant:
        # Benign: gently lobulated at most (2-3 macrolobulations of low amplitude).
        for k in (2, 3):
            radius += rng.uniform(0.0, 0.04) * np.cos(k * theta + rng.uniform(0, 2 * np.pi))
        return radius
    # Malignant: irregular (angular/microlobulated) boundary ...
    for k in range(2, 9):
        radius += rng.uniform(0.03, 0.10) / np.sqrt(k - 1) * np.cos(k * theta + rng.uniform(0, 2 * np.pi))
    # ... and often spiculated: narrow radial spikes.
    if rng.random() < 0.6:
        for _ in range(rng.integers(4, 10)):
            centre = rng.uniform(-np.pi, np.pi)
            width = rng.uniform(0.04, 0.09)
            delta = (theta - centre + np.pi) % (2 * np.pi) - np.pi
            radius += rng.uniform(0.25, 0.6) * np.exp(-0.5 * (delta / width) ** 2)
    return np.maximum(radius, 0.4)


def _one_phantom(rng: np.random.Generator, size: int, malignant: bool) -> tuple[np.ndarray, np.ndarray]:
    s = size
    axis = ((np.arange(s) + 0.5) / s).astype(np.float32)
    yy, xx = np.meshgrid(axis, axis, indexing="ij")  # yy = depth in [0, 1], xx = lateral

    # 1. tissue layers (echogenicity on an arbitrary linear scale, ~1 = glandular tissue)
    skin_end = 0.035 + _smooth_curve(rng, axis, 0.006)
    fat_end = rng.uniform(0.16, 0.26) + _smooth_curve(rng, axis, 0.03)
    gland_end = rng.uniform(0.70, 0.82) + _smooth_curve(rng, axis, 0.05)
    echo = np.full((s, s), rng.uniform(0.35, 0.50), np.float32)  # subcutaneous fat
    echo[yy < skin_end[None, :]] = rng.uniform(1.3, 1.7)
    gland = (yy >= fat_end[None, :]) & (yy < gland_end[None, :])
    echo[gland] = rng.uniform(0.85, 1.1)
    muscle = yy >= gland_end[None, :]
    # oblique striations sin(a*y + b*x), written as a sum of outer products (separable, cheap)
    phase_y, phase_x = 2 * np.pi * axis * rng.uniform(10, 16), 2 * np.pi * axis * rng.uniform(-2, 2)
    striation = 1.0 + 0.25 * (np.outer(np.sin(phase_y), np.cos(phase_x)) + np.outer(np.cos(phase_y), np.sin(phase_x)))
    echo[muscle] = (rng.uniform(0.45, 0.6) * striation)[muscle]
    # Cooper's ligaments: thin bright oblique lines in the glandular layer.
    for _ in range(rng.integers(1, 4)):
        angle = rng.uniform(-0.7, 0.7)
        offset = rng.uniform(0.1, 0.9)
        line = gland & (np.abs(np.cos(angle) * (xx - offset) - np.sin(angle) * (yy - 0.5)) < 0.006)
        echo[line] *= 1.6

    # 3. the lesion geometry (drawn before the distractors, which avoid it)
    depth_c = rng.uniform(fat_end.mean() + 0.12, min(gland_end.mean() - 0.12, 0.6))
    lateral_c = rng.uniform(0.3, 0.7)
    size_c = rng.uniform(0.07, 0.15)
    aspect = rng.uniform(1.3, 1.9)
    if malignant:  # taller than wide
        ry, rx = size_c * aspect**0.5, size_c / aspect**0.5
    else:  # wider than tall
        ry, rx = size_c / aspect**0.5, size_c * aspect**0.5
    tilt = rng.uniform(-0.25, 0.25)
    radius_table = _lesion_radius(rng, malignant)
    win = _window(depth_c, lateral_c, 1.15 * float(radius_table.max()) * max(ry, rx), s)
    rho, theta = _polar(yy[win], xx[win], depth_c, lateral_c, ry, rx, tilt)
    boundary = np.interp(theta, _THETA, radius_table).astype(np.float32)
    lesion = np.zeros((s, s), bool)
    lesion[win] = rho <= boundary
    # Darkest in the centre, as dark as the darkest fat lobules at the rim.
    core = rng.uniform(0.06, 0.16)
    rim_level = rng.uniform(0.20, 0.30)
    profile = core + (rim_level - core) * np.clip(rho / boundary, 0, 1) ** 2
    texture = 1.0 + gaussian_filter(rng.standard_normal(rho.shape).astype(np.float32), 2.0 * s / 256)
    lesion_echo = np.clip(profile * texture, 0.03, None)

    # 2. distractors: hypoechoic fat lobules (flat ovals), avoiding the lesion
    for j in range(rng.integers(4, 9)):
        for _attempt in range(6):
            ly = rng.uniform(fat_end.mean() * 0.5, gland_end.mean() - 0.05)
            lx = rng.uniform(0.05, 0.95)
            lr = rng.uniform(0.03, 0.09) * (1.3 if j < 2 else 1.0)
            if np.hypot((ly - depth_c) / (ry + lr), (lx - lateral_c) / (rx + lr)) > 1.3:
                break
        lwin = _window(ly, lx, 1.2 * lr, s)
        radius, _ = _polar(yy[lwin], xx[lwin], ly, lx, lr * rng.uniform(0.45, 0.75), lr, rng.uniform(-0.3, 0.3))
        level = rng.uniform(0.18, 0.28) if j < 2 else rng.uniform(0.28, 0.45)
        weight = np.clip((1.15 - radius) / 0.3, 0, 1)  # soft-edged lobule
        echo[lwin] = echo[lwin] * (1 - weight) + level * weight

    echo[win] = np.where(lesion[win], lesion_echo, echo[win])
    if not malignant and rng.random() < 0.5:  # thin echogenic capsule
        capsule = (rho > boundary) & (rho <= boundary * (1.0 + rng.uniform(0.05, 0.1)))
        echo[win][capsule] *= rng.uniform(1.3, 1.7)

    # posterior acoustic features: a band under the lesion, fading with distance below it
    rows, cols = np.nonzero(lesion)
    bottom = rows.max() / s if rows.size else depth_c
    col_lo, col_hi = (cols.min() / s, cols.max() / s) if cols.size else (lateral_c, lateral_c)
    centre_x, half_w = 0.5 * (col_lo + col_hi), 0.5 * (col_hi - col_lo)
    start = min(s - 1, int(bottom * s))
    ys, xs = yy[start:], xx[start:]
    below = np.clip((ys - bottom) / 0.05, 0, 1)
    if malignant:
        spread = half_w * (1.0 + 0.8 * np.clip(ys - bottom, 0, None))
        across = np.clip((spread - np.abs(xs - centre_x)) / (0.25 * spread + 1e-6), 0, 1)
        echo[start:] *= 1 - rng.uniform(0.45, 0.7) * below * across
    elif rng.random() < 0.6:
        across = np.clip((half_w - np.abs(xs - centre_x)) / (0.3 * half_w + 1e-6), 0, 1)
        fade = np.exp(-np.clip(ys - bottom, 0, None) / 0.25)
        echo[start:] *= 1 + rng.uniform(0.2, 0.45) * below * across * fade

    echo = gaussian_filter(echo, 0.6 * s / 256)  # finite resolution blurs tissue boundaries

    # 4. speckle: magnitude of a smoothed circular complex Gaussian field (Rayleigh, mean 1)
    sigma = (0.7 * s / 256, 1.6 * s / 256)  # (axial, lateral)
    re = gaussian_filter(rng.standard_normal((s, s), dtype=np.float32), sigma)
    im = gaussian_filter(rng.standard_normal((s, s), dtype=np.float32), sigma)
    speckle = np.hypot(re, im)
    speckle /= speckle.mean()

    # 5. attenuation, gain and log compression to 8 bits. The gain varies smoothly across the
    # probe (uneven contact) and with depth (the operator's time-gain compensation sliders),
    # which also keeps phantoms from looking alike to a perceptual hash.
    attenuation = np.exp(-rng.uniform(0.9, 1.7) * axis + _smooth_curve(rng, axis, 0.25))[:, None]
    lateral_gain = np.exp(_smooth_curve(rng, axis, 0.3, n_waves=2))[None, :]
    envelope = echo * speckle * (attenuation * lateral_gain).astype(np.float32) * np.float32(rng.uniform(0.8, 1.2))
    dynamic = np.float32(40.0)
    display = np.log1p(dynamic * envelope) * np.float32(255.0 / np.log1p(40.0 * 3.0))
    image = np.clip(np.round(display), 0, 255).astype(np.uint8)
    return image, lesion.astype(np.uint8)


def _labels(n: int, seed: int) -> list[str]:
    labels: list[str] = []
    for block in range((n + 4) // 5):
        pattern = np.array(["benign"] * 3 + ["malignant"] * 2)
        np.random.default_rng([seed, 10**6 + block]).shuffle(pattern)
        labels.extend(pattern.tolist())
    return labels[:n]


def make_phantoms(n: int, image_size: int = 256, seed: int = 0) -> PhantomSet:
    """Generate ``n`` phantoms of ``image_size`` pixels square (deterministic in ``seed``)."""
    if int(n) < 1:
        raise ConfigError(f"phantom count n={n} must be >= 1")
    if int(image_size) < 16:
        raise ConfigError(f"phantom image_size={image_size} must be >= 16")
    labels = _labels(int(n), int(seed))
    images = np.empty((n, image_size, image_size), np.uint8)
    masks = np.empty((n, image_size, image_size), np.uint8)
    for i, label in enumerate(labels):
        rng = np.random.default_rng([int(seed), i])
        images[i], masks[i] = _one_phantom(rng, int(image_size), label == "malignant")
    return PhantomSet(images=images, masks=masks, labels=labels)


def phantom_id(index: int) -> str:
    return f"phantom_{index:04d}"


def write_phantom_dataset(root: str | Path, n: int, image_size: int = 256, seed: int = 0) -> Path:
    """Write phantoms in the ``folder`` layout: ``images/``, ``masks/`` (0/255 PNG) and
    ``labels.csv`` (``id,label``). Written into a temporary sibling folder and renamed, so a
    reader never sees a half-written dataset; an existing complete dataset is replaced.
    """
    root = Path(root)
    data = make_phantoms(n, image_size, seed)
    root.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{root.name}.", dir=root.parent))
    try:
        (tmp / "images").mkdir()
        (tmp / "masks").mkdir()
        for i, label in enumerate(data.labels):
            Image.fromarray(data.images[i]).save(tmp / "images" / f"{phantom_id(i)}.png")
            Image.fromarray(data.masks[i] * 255).save(tmp / "masks" / f"{phantom_id(i)}.png")
        with open(tmp / "labels.csv", "w", newline="") as fh:
            writer = csv.writer(fh)
            writer.writerow(["id", "label"])
            writer.writerows((phantom_id(i), label) for i, label in enumerate(data.labels))
        (tmp / "PHANTOM").write_text(f"{PHANTOM_FORMAT} n={n} image_size={image_size} seed={seed}\n")
        if root.exists():
            if not (root / "PHANTOM").exists():
                raise DataError(f"{root} exists and is not a phantom dataset; refusing to overwrite it")
            shutil.rmtree(root)
        try:
            os.replace(tmp, root)
        except OSError:
            # Another process wrote the same dataset meanwhile: keep theirs.
            if not (root / "PHANTOM").exists():
                raise
            shutil.rmtree(tmp, ignore_errors=True)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return root
