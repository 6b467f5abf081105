"""Scanner-like corruptions of B-mode images for the robustness benchmark (``evaluate
--corruptions``), in the spirit of ImageNet-C (Hendrycks & Dietterich, ICLR 2019): a fixed set of
shifts, five severities each, deterministic.

Each corruption acts on an image in its **own (original) geometry** — the decoded uint8 grey
``[H, W]`` array, before any resizing or normalisation of a model — so every model sees the
same corrupted input; geometric ones (``zoom``) move the ground-truth mask with the image.
Sizes (blur widths, speckle grain, text height) are fractions of the image's shorter side, so a
corruption looks alike on a 400-pixel and on a 900-pixel scan.

Determinism: the random choices of a corruption for one image (the sign of a gain shift, the
shape of a TGC curve, the speckle field, a crop's position, where text goes) come from a
generator seeded by ``(seed, corruption, image id)`` — not by the severity, so that the five
severities of one image are the same shift growing in strength.

Intensities: a display value ``v = pixel / 255`` is taken as log-compressed over a dynamic range
``DR = 60 dB`` (a common B-mode default): a gain of ``g`` dB adds ``g / DR`` to ``v``. Gain changes
act on echoes only: black (outside the field of view) stays black (:func:`_echo_weight`).
"""

from __future__ import annotations

import io
import math
import zlib
from dataclasses import dataclass
from typing import Callable, Sequence

import numpy as np
from PIL import Image, ImageDraw, ImageFont
from scipy import ndimage

from busseg.errors import ConfigError

DISPLAY_DYNAMIC_RANGE_DB = 60.0
SEVERITIES = (1, 2, 3, 4, 5)


@dataclass(frozen=True)
class Corruption:
    name: str
    levels: tuple  # the parameter at severities 1..5
    describe: str  # what the parameter is
    apply: Callable[..., tuple[np.ndarray, np.ndarray]]  # (image, mask, level, rng) -> (image, mask)


def _to_unit(image: np.ndarray) -> np.ndarray:
    return image.astype(np.float32) / 255.0


def _to_uint8(values: np.ndarray) -> np.ndarray:
    return np.clip(np.rint(values * 255.0), 0, 255).astype(np.uint8)


def _echo_weight(image: np.ndarray) -> np.ndarray:
    """The field of view, softly: 1 where there is echo data nearby, 0 in the black outside a
    sector's field of view (which a gain change does not touch).

    A pixel belongs to the field of view when some pixel within 4 % of the shorter side is
    brighter than 4 grey levels (dark tissue and anechoic cysts hold such pixels, the black
    surround does not); the boundary is smoothed over 0.5 %. A per-pixel threshold instead
    would leave the darkest pixels of hypoechoic tissue black while their neighbours brighten:
    salt-and-pepper noise that no scanner makes."""
    side = _side(image)
    window = 2 * max(1, round(0.04 * side)) + 1
    fov = ndimage.maximum_filter(image, size=window) > 4
    return ndimage.gaussian_filter(fov.astype(np.float32), max(0.5, 0.005 * side))


def _side(image: np.ndarray) -> int:
    return min(image.shape[:2])


def _resize_pair(image: np.ndarray, mask: np.ndarray, shape: tuple[int, int]):
    """Image (bilinear, anti-aliased) and mask (float resize, threshold 0.5) to ``shape``."""
    rows, cols = shape
    img = np.asarray(Image.fromarray(image).resize((cols, rows), Image.BILINEAR))
    m = Image.fromarray(mask.astype(np.float32), mode="F").resize((cols, rows), Image.BILINEAR)
    return img, np.asarray(m) >= 0.5


# --------------------------------------------------------------------------- the corruptions


def gain(image, mask, level_db, rng):
    """Overall gain shift of ``level_db`` dB, brighter or darker (one random sign per image):
    ``v' = clip(v + w(v) g / DR)``; saturation at white and at black is what a wrong gain does."""
    g = level_db * (1 if rng.random() < 0.5 else -1)
    v = _to_unit(image)
    return _to_uint8(v + _echo_weight(image) * g / DISPLAY_DYNAMIC_RANGE_DB), mask


def tgc(image, mask, level_db, rng):
    """Depth-dependent gain (a mis-set time-gain compensation): a gain curve along depth, linear
    between 5 knots drawn uniformly in ``[-level_db, level_db]`` dB (one TGC slider per depth
    band), added as ``g(row) / DR``."""
    knots = rng.uniform(-1.0, 1.0, 5) * level_db
    rows = image.shape[0]
    curve = np.interp(np.linspace(0, 1, rows), np.linspace(0, 1, knots.size), knots)
    v = _to_unit(image)
    return _to_uint8(v + _echo_weight(image) * (curve[:, None] / DISPLAY_DYNAMIC_RANGE_DB)), mask


def speckle(image, mask, sigma, rng):
    """Stronger speckle: ``v' = clip(v (1 + sigma n))``, ``n`` unit-variance Gaussian noise smoothed
    to a grain of 0.4 % of the shorter side (about one resolution cell of a B-mode frame)."""
    grain = max(1.0, 0.004 * _side(image))
    field = ndimage.gaussian_filter(rng.standard_normal(image.shape).astype(np.float32), grain, mode="reflect")
    field /= max(float(field.std()), 1e-6)
    return _to_uint8(_to_unit(image) * (1 + sigma * field)), mask


def blur(image, mask, width, rng):
    """Loss of resolution: a point-spread function twice as wide laterally as axially (lateral
    resolution is the poorer one in B-mode), Gaussian with lateral sigma ``width`` x the shorter
    side, then sampling at the coarser pitch that resolution supports (down to 1/(1 + 100 width)
    and back up)."""
    side = _side(image)
    sigma_lateral = width * side
    v = ndimage.gaussian_filter(image.astype(np.float32), (sigma_lateral / 2, sigma_lateral), mode="nearest")
    factor = 1.0 / (1.0 + 100 * width)
    rows, cols = image.shape
    small = Image.fromarray(v, mode="F").resize((max(1, round(cols * factor)), max(1, round(rows * factor))),
                                                Image.BILINEAR)
    back = np.asarray(small.resize((cols, rows), Image.BICUBIC), np.float32)
    return np.clip(np.rint(back), 0, 255).astype(np.uint8), mask


def contrast(image, mask, factor, rng):
    """Lower contrast (a flatter grey map): ``v' = mean + factor (v - mean)`` over the echo region."""
    v = _to_unit(image)
    w = _echo_weight(image)
    mean = float((v * w).sum() / max(w.sum(), 1.0))
    return _to_uint8(v + w * ((mean + factor * (v - mean)) - v)), mask


def gamma(image, mask, level, rng):
    """Another grey map: ``v' = v ** gamma`` with ``gamma = level`` or ``1 / level`` (one random
    direction per image: darker mid-greys or lifted mid-greys)."""
    g = level if rng.random() < 0.5 else 1.0 / level
    return _to_uint8(_to_unit(image) ** g), mask


def zoom(image, mask, factor, rng):
    """Field of view: zoomed in by ``factor`` (a window ``1 / factor`` of each side at a random
    position, enlarged back to the frame) or out (a deeper, wider field of view: the scan shrunk
    by ``1 / factor`` and placed at the top centre of a black frame, skin line at the top); one
    random direction per image. The mask follows."""
    rows, cols = image.shape
    zoom_in = rng.random() < 0.5
    if zoom_in:
        h, w = max(1, round(rows / factor)), max(1, round(cols / factor))
        top, left = int(rng.integers(0, rows - h + 1)), int(rng.integers(0, cols - w + 1))
        return _resize_pair(image[top:top + h, left:left + w], mask[top:top + h, left:left + w], (rows, cols))
    h, w = max(1, round(rows / factor)), max(1, round(cols / factor))
    small, small_mask = _resize_pair(image, mask, (h, w))
    out = np.zeros_like(image)
    out_mask = np.zeros_like(mask, dtype=bool)
    left = (cols - w) // 2
    out[:h, left:left + w] = small
    out_mask[:h, left:left + w] = small_mask
    return out, out_mask


def jpeg(image, mask, quality, rng):
    """JPEG compression at ``quality`` (Pillow's encoder, 4:2:0 irrelevant for grey images), as
    when scans are exported from a PACS or a scanner's USB export."""
    buf = io.BytesIO()
    Image.fromarray(image).save(buf, format="JPEG", quality=int(quality))
    return np.asarray(Image.open(io.BytesIO(buf.getvalue())).convert("L")), mask


_HEADER = ("L12-5 {mhz}MHz", "Gn {gain}  DR {dr}", "D {depth:.1f}cm", "RT BREAST {clock}:00", "{dist}CM FN",
           "FR {fr}Hz", "MI 1.{mi}  TIs 0.{tis}")


def annotations(image, mask, level, rng):
    """Burned-in overlays: scanner text (transducer, frequency, gain, depth, laterality and
    clock position), caliper crosses at the lesion's extremes with a dotted measurement line
    and a distance read-out, and a depth scale — as sonographers leave them on exported frames.
    ``level`` 1-5 adds, in turn: one text line; calipers on the lesion's width; more text and
    the depth scale; calipers on its height; larger text and a second set of marks.

    Calipers sit where a sonographer puts them, on the lesion border (from the ground-truth
    mask, with a few pixels of jitter): that such marks point at lesions is exactly the shortcut
    a model must not rely on."""
    rows, cols = image.shape
    side = _side(image)
    canvas = Image.fromarray(image)
    draw = ImageDraw.Draw(canvas)
    size = max(8, round(side * (0.035 if level < 5 else 0.05)))
    font = ImageFont.load_default(size=size)
    bright = int(rng.integers(215, 256))
    values = dict(mhz=int(rng.integers(7, 15)), gain=int(rng.integers(40, 80)), dr=int(rng.choice([60, 66, 72])),
                  depth=float(rng.uniform(2.5, 5.0)), clock=int(rng.integers(1, 13)), dist=int(rng.integers(1, 7)),
                  fr=int(rng.integers(12, 40)), mi=int(rng.integers(0, 9)), tis=int(rng.integers(1, 9)))
    n_lines = {1: 1, 2: 1, 3: 4, 4: 4, 5: 7}[level]
    lines = [t.format(**values) for t in _HEADER[:n_lines]]
    x0, y0 = round(0.02 * cols), round(0.02 * rows)
    right = rng.random() < 0.5
    for i, line in enumerate(lines):
        width = draw.textlength(line, font=font)
        x = cols - x0 - width if (right and i >= 2) else x0
        y = y0 + i * round(size * 1.25) if not (right and i >= 2) else y0 + (i - 2) * round(size * 1.25)
        draw.text((x, y), line, fill=bright, font=font)

    def cross(cx, cy, arm):
        draw.line([(cx - arm, cy), (cx + arm, cy)], fill=bright, width=max(1, arm // 4))
        draw.line([(cx, cy - arm), (cx, cy + arm)], fill=bright, width=max(1, arm // 4))

    def dotted(p, q):
        n = max(2, int(math.hypot(q[0] - p[0], q[1] - p[1]) // max(3, side // 80)))
        for t in np.linspace(0, 1, n)[1:-1:2]:
            x, y = p[0] + t * (q[0] - p[0]), p[1] + t * (q[1] - p[1])
            r = max(1, side // 250)
            draw.ellipse([x - r, y - r, x + r, y + r], fill=bright)

    arm = max(3, round(side * 0.012))
    ys, xs = np.nonzero(mask)
    if ys.size:
        cy, cx = int(np.median(ys)), int(np.median(xs))
        row_x = xs[ys == cy] if (ys == cy).any() else xs
        col_y = ys[xs == cx] if (xs == cx).any() else ys
        width_pair = ((int(row_x.min()), cy), (int(row_x.max()), cy))
        height_pair = ((cx, int(col_y.min())), (cx, int(col_y.max())))
    else:
        cy, cx = int(rng.integers(rows // 4, 3 * rows // 4)), int(rng.integers(cols // 4, 3 * cols // 4))
        width_pair = ((cx - side // 8, cy), (cx + side // 8, cy))
        height_pair = ((cx, cy - side // 10), (cx, cy + side // 10))
    jitter = max(1, side // 150)

    def jittered(p):
        return (p[0] + int(rng.integers(-jitter, jitter + 1)), p[1] + int(rng.integers(-jitter, jitter + 1)))

    pairs = ([width_pair] if level >= 2 else []) + ([height_pair] if level >= 4 else [])
    for k, (p, q) in enumerate(pairs):
        p, q = jittered(p), jittered(q)
        cross(*p, arm)
        cross(*q, arm)
        dotted(p, q)
        label = f"{k + 1} D {abs(q[0] - p[0] + q[1] - p[1]) * values['depth'] / rows:.2f}cm"
        draw.text((x0, rows - y0 - (len(pairs) - k) * round(size * 1.25)), label, fill=bright, font=font)
    if level >= 3:  # depth scale: ticks every centimetre on the right edge
        step = rows / values["depth"]
        x = cols - round(0.015 * cols)
        for i in range(int(values["depth"]) + 1):
            y = round(i * step)
            draw.line([(x - arm, y), (x, y)], fill=bright, width=max(1, arm // 4))
    if level >= 5:  # a second lesion-free measurement left behind (a marked cyst, a duct)
        p = (int(rng.integers(cols // 10, cols // 2)), int(rng.integers(rows // 3, rows - rows // 8)))
        q = (p[0] + int(rng.integers(side // 10, side // 5)), p[1])
        cross(*p, arm)
        cross(*q, arm)
        dotted(p, q)
    return np.asarray(canvas), mask


CORRUPTIONS: dict[str, Corruption] = {c.name: c for c in (
    Corruption("gain", (3.0, 6.0, 9.0, 12.0, 15.0), "overall gain shift in dB (random sign)", gain),
    Corruption("tgc", (4.0, 8.0, 12.0, 16.0, 20.0), "largest TGC knot in dB", tgc),
    Corruption("speckle", (0.06, 0.12, 0.18, 0.25, 0.33), "multiplicative speckle std", speckle),
    Corruption("blur", (0.004, 0.007, 0.01, 0.014, 0.02), "lateral PSF sigma / shorter side", blur),
    Corruption("contrast", (0.8, 0.65, 0.5, 0.4, 0.3), "contrast factor", contrast),
    Corruption("gamma", (1.25, 1.5, 1.8, 2.2, 2.7), "gamma (or its inverse)", gamma),
    Corruption("zoom", (1.1, 1.2, 1.35, 1.5, 1.7), "zoom factor (in or out)", zoom),
    Corruption("jpeg", (50, 30, 18, 10, 5), "JPEG quality", jpeg),
    Corruption("annotations", (1, 2, 3, 4, 5), "overlay level (text, calipers, depth scale)", annotations),
)}


def corruption_seed(seed: int, name: str, key: str) -> int:
    """A stable seed (independent of Python's hash randomisation) for one image's corruption."""
    return zlib.crc32(f"{int(seed)}|{name}|{key}".encode())


def corrupt(image: np.ndarray, mask: np.ndarray, name: str, severity: int, *, key: str, seed: int = 0):
    """``(image, mask)`` corrupted by ``name`` at ``severity`` (1-5); ``key`` (the sample id) and
    ``seed`` fix the random choices. ``image``: uint8 ``[H, W]``; ``mask``: bool ``[H, W]``.
    Returns a new uint8 image and bool mask of the same shape."""
    if name not in CORRUPTIONS:
        raise ConfigError(f"unknown corruption {name!r}; known: {', '.join(CORRUPTIONS)}")
    if severity not in SEVERITIES:
        raise ConfigError(f"corruption severity must be one of {SEVERITIES}, got {severity!r}")
    image = np.asarray(image)
    if image.dtype != np.uint8 or image.ndim != 2:
        raise ConfigError(f"corrupt: expected a uint8 [H, W] grey image, got {image.dtype} {image.shape}")
    mask = np.asarray(mask, dtype=bool)
    if mask.shape != image.shape:
        raise ConfigError(f"corrupt: mask shape {mask.shape} differs from image shape {image.shape}")
    c = CORRUPTIONS[name]
    rng = np.random.default_rng(corruption_seed(seed, name, key))
    out, out_mask = c.apply(image, mask, c.levels[severity - 1], rng)
    return np.ascontiguousarray(out, dtype=np.uint8), np.ascontiguousarray(out_mask, dtype=bool)


def check_corruptions(names: Sequence[str] | None,
                      severities: Sequence[int] = SEVERITIES) -> tuple[list[str], list[int]]:
    """The corruption ``names`` (``None`` or empty: all) and ``severities``, checked: an unknown
    name or a severity outside 1-5 is a :class:`ConfigError` naming it."""
    names = list(names or CORRUPTIONS)
    unknown = [n for n in names if n not in CORRUPTIONS]
    if unknown:
        raise ConfigError(f"unknown corruption(s) {unknown}; known: {', '.join(CORRUPTIONS)}")
    try:
        levels = [int(s) for s in severities]
    except (TypeError, ValueError):
        levels = []
    if not levels or any(s not in SEVERITIES for s in levels):
        raise ConfigError(f"corruption severities must be among {list(SEVERITIES)}, got {list(severities)}")
    return names, levels


def parse_corruptions(text: str | None) -> list[str]:
    """``None``/``"all"`` -> every corruption; otherwise a comma-separated list, checked."""
    if text in (None, "", "all"):
        return list(CORRUPTIONS)
    return check_corruptions([t.strip() for t in str(text).split(",") if t.strip()])[0]
