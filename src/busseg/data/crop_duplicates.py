"""Crop, zoom and small-shift duplicates: local features, a visual-word index, a geometric check.

A global perceptual hash (:func:`busseg.data.audit.dct_hash`) sees an image as a whole, so the
same scan saved with another crop or field of view (BUSI's ``benign (62)`` is ``benign (140)``
with its right edge cut off: 389x594 vs 452x591 pixels) hashes far apart. This module finds
such pairs in three steps; the third (geometric confirmation) alone decides.

1. **Local features.** Each image is reduced (area averaging) so that its longer side is
   ``working_size`` pixels (never enlarged) and described by at most ``max_features`` SIFT
   keypoints (Lowe 2004, OpenCV), kept as ``uint8`` descriptors. Descriptors are compared as
   RootSIFT (Arandjelović & Zisserman 2012): L1-normalised, then square-rooted, so that the
   Euclidean distance becomes the Hellinger distance of the gradient histograms.
2. **Candidate index** (bag of visual words, Sivic & Zisserman 2003). The vocabulary is
   ``vocabulary_size`` descriptors drawn (seeded) from all images; every descriptor votes for
   its nearest word. Each image is the tf-idf weighted histogram of its words, L2-normalised,
   ``w_t = n_t * log(N / N_t)`` (``n_t``: occurrences of word ``t`` in the image, ``N_t``:
   images holding ``t``); two images are compared by the cosine of their histograms, and each
   image proposes its ``neighbours`` most similar images as candidate pairs. No k-means: copies
   of one scan share the *same* speckle, so their descriptors are near-identical and fall into
   the same cell of any fine partition of descriptor space; drawing the words costs nothing,
   where clustering 60 000 descriptors into 2048 words took two minutes on 2 CPU cores.
   Cost: ``O(D * W)`` for the words of ``D`` descriptors, one sparse ``N x N`` product, and
   ``N * neighbours`` geometric checks — linear in ``N`` where it matters, never a comparison
   of every pair at full resolution.
3. **Geometric confirmation** of each candidate pair not already in one hash cluster:
   descriptors are matched to their nearest neighbour in the other image and kept when closer
   than ``ratio`` times the second nearest (Lowe's ratio test); a 4-degree-of-freedom
   similarity ``x_b = s R(theta) x_a + t`` (uniform scale, rotation, translation) is fitted by
   RANSAC (``cv2.estimateAffinePartial2D``, reprojection threshold ``ransac_threshold`` pixels
   at working resolution). The pair is confirmed when all hold:

   - at least ``min_inliers`` inlier matches;
   - ``1 / max_scale <= s <= max_scale`` and ``|theta| <= max_rotation`` degrees (a scanner
     zooms and crops; it does not rotate the display);
   - the two fields of view overlap on at least ``min_overlap`` of the smaller image;
   - **the inliers are spread over the overlap**: they fall in at least ``min_cells`` cells of
     a ``grid x grid`` grid laid over the overlap's bounding box (in image ``a``), in at least
     two rows and two columns. Two different scans from one scanner share overlays at identical
     positions (text such as "RT AXILLA", calipers, logos, depth ticks, the dark sector
     border); these match under a clean similarity, but they are compact;
   - **the aligned images agree locally**: ``a`` is warped onto ``b`` (160-pixel thumbnails),
     both are cut into 12x12 blocks, each block is centred on its own mean and the normalised
     cross-correlation (NCC) of every block inside the overlap where both images vary is taken;
     their median (the *local agreement*) must reach ``min_agreement``. Centring each block
     removes the brightness layout that every breast scan shares (a global NCC gives two
     different scans 0.3-0.78), so only the same structures in the same places count.

   Measured on BUSI's 780 images (every confirmed pair and a sample of the rejected ones looked
   at): overlay-driven fits between different scans reach 8-24 inliers in 1-4 cells with a local
   agreement of -0.06 to 0.24; copies of one scan 38-317 inliers in 11-16 cells, agreement
   0.80-0.99; adjacent frames of one lesion 8-26 inliers in 4-8 cells, agreement 0.25-0.70.
   Adjacent frames whose inliers crowd into fewer cells are missed (``malignant (69)`` /
   ``malignant (70)``); most are linked anyway through another pair of their group. Overlays
   that cover a large share of both images at the same places pull the agreement of two
   unrelated scans up (labels over about a fifth of two phantoms: 0.08-0.16), so the agreement
   threshold has a margin for ordinary overlays, not for screenshots full of text. The
   agreement also names the kind of a confirmed pair: at least ``SAME_PIXELS_AGREEMENT`` (0.75)
   "same pixels", a re-cropped or re-zoomed copy; below, "another frame" of the same scene.

All thresholds are in :class:`CropSearch`; every confirmed pair keeps its transform, inliers and
local agreement so that a person can check it (``busseg data audit --figure``).
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field

import numpy as np

from busseg.console import progress_bar
from busseg.errors import ConfigError

try:  # OpenCV is a dependency; a clear message if a broken install hides it
    import cv2
except ImportError as exc:  # pragma: no cover - exercised only without opencv
    cv2 = None
    _CV2_ERROR = exc
else:
    _CV2_ERROR = None

# Local agreement at or above this reads as "the same pixels" (a re-cropped, re-zoomed or
# re-encoded copy); measured on BUSI: copies 0.8-0.99, adjacent frames of one lesion 0.25-0.7.
SAME_PIXELS_AGREEMENT = 0.75
_THUMBNAIL_SIZE = 160  # longer side of the thumbnail kept for the local agreement
AGREEMENT_BLOCK = 12  # block side (thumbnail pixels) of the local agreement


def _require_cv2():
    if cv2 is None:
        raise ConfigError(
            f"crop/zoom duplicate search needs OpenCV (pip install opencv-python-headless): {_CV2_ERROR}"
        )
    return cv2


@dataclass(frozen=True)
class CropSearch:
    """Settings of the crop/zoom/shift duplicate search (see the module docstring)."""

    working_size: int = 320
    max_features: int = 400
    vocabulary_size: int = 2048
    neighbours: int = 10
    ratio: float = 0.8
    ransac_threshold: float = 3.0
    min_inliers: int = 8
    grid: int = 4
    min_cells: int = 4
    max_scale: float = 3.0
    max_rotation: float = 10.0
    min_overlap: float = 0.2
    min_agreement: float = 0.2
    seed: int = 0

    def __post_init__(self) -> None:
        positive = ("working_size", "max_features", "vocabulary_size", "neighbours", "grid")
        for name in positive:
            if int(getattr(self, name)) < 1:
                raise ConfigError(f"crop search: {name}={getattr(self, name)!r} must be >= 1")
        if self.working_size < 32:
            raise ConfigError(f"crop search: working_size={self.working_size} is too small (>= 32)")
        if not 0 < self.ratio <= 1:
            raise ConfigError(f"crop search: ratio={self.ratio} must be in (0, 1]")
        if self.min_inliers < 3:
            raise ConfigError(f"crop search: min_inliers={self.min_inliers} must be >= 3 (2 points fix a similarity)")
        if not 1 <= self.min_cells <= self.grid**2:
            raise ConfigError(f"crop search: min_cells={self.min_cells} must be in [1, grid^2={self.grid**2}]")
        if self.max_scale < 1 or self.ransac_threshold <= 0 or not 0 <= self.min_overlap <= 1:
            raise ConfigError("crop search: max_scale >= 1, ransac_threshold > 0 and 0 <= min_overlap <= 1 required")
        if not -1 <= self.min_agreement <= 1:
            raise ConfigError(f"crop search: min_agreement={self.min_agreement} must be in [-1, 1] (an NCC)")

    def to_dict(self) -> dict:
        return {"method": "SIFT (RootSIFT) + tf-idf visual words + RANSAC similarity (OpenCV)", **asdict(self)}


@dataclass
class ImageFeatures:
    """Local features of one image (see step 1 of the module docstring)."""

    points: np.ndarray  # float32 [K, 2], (x, y) at working resolution
    descriptors: np.ndarray  # uint8 [K, 128] SIFT descriptors
    shape: tuple[int, int]  # (H, W) of the original image
    factor: float  # working resolution / original resolution
    thumbnail: np.ndarray = field(repr=False)  # uint8, longer side <= _THUMBNAIL_SIZE
    thumbnail_factor: float = 1.0  # thumbnail / original

    def root_sift(self) -> np.ndarray:
        d = self.descriptors.astype(np.float32)
        return np.sqrt(d / (d.sum(axis=1, keepdims=True) + 1e-7))


def _reduce(image: np.ndarray, longer_side: int) -> tuple[np.ndarray, float]:
    cv = _require_cv2()
    factor = min(1.0, longer_side / max(image.shape))
    if factor == 1.0:
        return image, 1.0
    size = (max(1, round(image.shape[1] * factor)), max(1, round(image.shape[0] * factor)))
    return cv.resize(image, size, interpolation=cv.INTER_AREA), factor


def extract_features(image: np.ndarray, settings: CropSearch = CropSearch()) -> ImageFeatures:
    """SIFT keypoints and descriptors of a ``uint8 [H, W]`` image at working resolution."""
    cv = _require_cv2()
    image = np.ascontiguousarray(image, dtype=np.uint8)
    work, factor = _reduce(image, settings.working_size)
    sift = cv.SIFT_create(nfeatures=settings.max_features)
    keypoints, descriptors = sift.detectAndCompute(work, None)
    if descriptors is None or not keypoints:
        points, descriptors = np.zeros((0, 2), np.float32), np.zeros((0, 128), np.uint8)
    else:
        points = np.array([k.pt for k in keypoints], np.float32)
        # OpenCV's SIFT descriptors are saturated to 0..255 integers: uint8 loses nothing
        descriptors = np.clip(np.rint(descriptors), 0, 255).astype(np.uint8)
    thumbnail, thumbnail_factor = _reduce(image, _THUMBNAIL_SIZE)
    return ImageFeatures(points, descriptors, tuple(image.shape[:2]), factor, thumbnail, thumbnail_factor)


def candidate_pairs(features: Sequence[ImageFeatures], settings: CropSearch = CropSearch()) -> list[tuple[int, int]]:
    """Candidate pairs ``(i, j)``, ``i < j``: each image with its ``neighbours`` most similar
    images by tf-idf visual words (step 2 of the module docstring)."""
    from scipy import sparse

    n = len(features)
    counts = [len(f.descriptors) for f in features]
    if n < 2 or sum(counts) == 0:
        return []
    descriptors = np.concatenate([f.root_sift() for f in features if len(f.descriptors)])
    owner = np.repeat(np.arange(n), counts)
    rng = np.random.default_rng(settings.seed)
    n_words = min(settings.vocabulary_size, len(descriptors))
    words = descriptors[np.sort(rng.choice(len(descriptors), n_words, replace=False))]
    word_norms = (words**2).sum(axis=1)
    assignment = np.empty(len(descriptors), np.int64)
    chunk = 8192
    for start in range(0, len(descriptors), chunk):
        block = descriptors[start : start + chunk]
        # argmin ||d - w||^2 = argmin (||w||^2 - 2 d.w)
        assignment[start : start + chunk] = np.argmin(word_norms[None, :] - 2.0 * block @ words.T, axis=1)
    histogram = sparse.csr_matrix((np.ones(len(assignment), np.float32), (owner, assignment)), shape=(n, n_words))
    histogram.sum_duplicates()
    document_frequency = np.asarray((histogram > 0).sum(axis=0)).ravel()
    idf = np.log(n / np.maximum(document_frequency, 1)).astype(np.float32)
    weighted = sparse.csr_matrix(histogram.multiply(idf[None, :]))
    norms = np.sqrt(np.asarray(weighted.multiply(weighted).sum(axis=1)).ravel())
    weighted = sparse.diags(1.0 / np.maximum(norms, 1e-12)) @ weighted
    weighted_t = weighted.T.tocsc()
    k = min(settings.neighbours, n - 1)
    pairs: set[tuple[int, int]] = set()
    for start in range(0, n, 512):
        similarity = (weighted[start : start + 512] @ weighted_t).toarray()
        for row, i in enumerate(range(start, min(n, start + 512))):
            similarity[row, i] = -1.0
        top = np.argsort(-similarity, axis=1, kind="stable")[:, :k]
        for row, neighbours in enumerate(top):
            i = start + row
            for j in neighbours:
                if similarity[row, j] > 0:
                    pairs.add((min(i, int(j)), max(i, int(j))))
    return sorted(pairs)


@dataclass
class GeometricMatch:
    """The similarity found between images ``a`` and ``b`` and the evidence for it.

    ``transform`` maps pixel coordinates ``(x, y)`` of ``a`` (original resolution) to ``b``:
    ``[x_b, y_b] = transform @ [x_a, y_a, 1]``.
    """

    a: str
    b: str
    confirmed: bool
    reason: str  # why it was rejected ("" when confirmed)
    matches: int
    inliers: int = 0
    transform: list[list[float]] | None = None
    scale: float = math.nan
    rotation_deg: float = math.nan
    shift: tuple[float, float] = (math.nan, math.nan)
    cells: int = 0
    overlap_a: float = math.nan  # share of a's area inside b's field of view
    overlap_b: float = math.nan  # share of b's area inside a's field of view
    agreement: float = math.nan  # median block NCC after alignment (local_agreement)

    @property
    def kind(self) -> str:
        if not self.confirmed:
            return "rejected"
        return "same pixels (crop/zoom/shift)" if self.agreement >= SAME_PIXELS_AGREEMENT else "same scene, another frame"

    def describe(self) -> str:
        if not self.confirmed:
            return f"{self.a} ~ {self.b}: rejected ({self.reason})"
        return (f"{self.a} ~ {self.b}: scale {self.scale:.3f}, rotation {self.rotation_deg:+.1f} deg, shift "
                f"({self.shift[0]:+.0f}, {self.shift[1]:+.0f}) px; {self.inliers}/{self.matches} inliers in "
                f"{self.cells} cells; overlap {self.overlap_a:.0%} of a, {self.overlap_b:.0%} of b; local "
                f"agreement {self.agreement:.2f} ({self.kind})")

    def to_dict(self) -> dict:
        out = asdict(self)
        out["kind"] = self.kind
        return out

    def outlines(self, shape_a: tuple[int, int], shape_b: tuple[int, int]) -> tuple[np.ndarray, np.ndarray]:
        """``(b's frame drawn in a, a's frame drawn in b)`` as ``[4, 2]`` ``(x, y)`` polygons."""
        if self.transform is None:
            raise ConfigError(f"{self.a} ~ {self.b}: no transform to draw")
        a_to_b = _homogeneous(np.asarray(self.transform, np.float64))
        return _apply(np.linalg.inv(a_to_b), _rectangle(shape_b)), _apply(a_to_b, _rectangle(shape_a))


def _scaling(factor: float) -> np.ndarray:
    return np.diag([factor, factor, 1.0])


def _homogeneous(affine: np.ndarray) -> np.ndarray:
    return np.vstack([affine, [0.0, 0.0, 1.0]])


def _rectangle(shape: tuple[int, int]) -> np.ndarray:
    h, w = shape
    return np.array([[0, 0], [w, 0], [w, h], [0, h]], np.float32)


def _apply(matrix: np.ndarray, points: np.ndarray) -> np.ndarray:
    return (points @ matrix[:2, :2].T + matrix[:2, 2]).astype(np.float32)


def _intersection(p: np.ndarray, q: np.ndarray) -> tuple[float, np.ndarray | None]:
    cv = _require_cv2()
    area, polygon = cv.intersectConvexConvex(p.astype(np.float32), q.astype(np.float32))
    return float(area), (None if polygon is None or area <= 0 else polygon.reshape(-1, 2))


def local_agreement(fa: ImageFeatures, fb: ImageFeatures, a_to_b: np.ndarray, block: int = AGREEMENT_BLOCK) -> tuple[float, int]:
    """Median over ``block``-pixel blocks of the NCC between b's thumbnail and a's thumbnail
    warped onto it, over the blocks inside the overlap where both images vary; and the number of
    such blocks. Each block is centred on its own mean, so the brightness layout every breast
    scan shares (bright skin and glands above, dark muscle and shadow below) does not count, only
    whether the same structures sit in the same places."""
    cv = _require_cv2()
    m = _scaling(fb.thumbnail_factor) @ a_to_b @ _scaling(1.0 / fa.thumbnail_factor)
    h, w = fb.thumbnail.shape
    warped = cv.warpAffine(fa.thumbnail.astype(np.float32), m[:2], (w, h), flags=cv.INTER_LINEAR)
    inside = cv.warpAffine(np.ones(fa.thumbnail.shape, np.uint8), m[:2], (w, h), flags=cv.INTER_NEAREST)
    inside = cv.erode(inside, np.ones((3, 3), np.uint8)) > 0  # drop interpolated borders
    rows, cols = h // block, w // block
    if rows == 0 or cols == 0:
        return math.nan, 0

    def blocks(x: np.ndarray) -> np.ndarray:
        return x[: rows * block, : cols * block].reshape(rows, block, cols, block).swapaxes(1, 2).reshape(
            rows * cols, block * block)

    p, q = blocks(warped), blocks(fb.thumbnail.astype(np.float32))
    usable = blocks(inside).all(axis=1) & (p.std(axis=1) >= 2.0) & (q.std(axis=1) >= 2.0)
    if not usable.any():
        return math.nan, 0
    p = p[usable] - p[usable].mean(axis=1, keepdims=True)
    q = q[usable] - q[usable].mean(axis=1, keepdims=True)
    ncc = (p * q).sum(axis=1) / np.sqrt((p * p).sum(axis=1) * (q * q).sum(axis=1))
    return float(np.median(ncc)), int(usable.sum())


def confirm_pair(fa: ImageFeatures, fb: ImageFeatures, settings: CropSearch = CropSearch(),
                 ids: tuple[str, str] = ("a", "b")) -> GeometricMatch:
    """Match, fit and check one pair (step 3 of the module docstring)."""
    cv = _require_cv2()
    a, b = ids
    if len(fa.descriptors) < 2 or len(fb.descriptors) < 2:
        return GeometricMatch(a, b, False, "too few keypoints", 0)
    knn = cv.BFMatcher(cv.NORM_L2).knnMatch(fa.root_sift(), fb.root_sift(), k=2)
    good = [m[0] for m in knn if len(m) == 2 and m[0].distance < settings.ratio * m[1].distance]
    if len(good) < settings.min_inliers:
        return GeometricMatch(a, b, False, f"{len(good)} matches < {settings.min_inliers}", len(good))
    src = fa.points[[m.queryIdx for m in good]]
    dst = fb.points[[m.trainIdx for m in good]]
    affine, inlier_flags = cv.estimateAffinePartial2D(
        src, dst, method=cv.RANSAC, ransacReprojThreshold=settings.ransac_threshold, maxIters=2000,
        confidence=0.999, refineIters=10)
    if affine is None:
        return GeometricMatch(a, b, False, "no similarity fits", len(good))
    inliers = inlier_flags.ravel().astype(bool)
    # working-resolution fit -> original pixel coordinates
    a_to_b = _scaling(1.0 / fb.factor) @ _homogeneous(affine) @ _scaling(fa.factor)
    scale = float(math.hypot(a_to_b[0, 0], a_to_b[1, 0]))
    rotation = float(math.degrees(math.atan2(a_to_b[1, 0], a_to_b[0, 0])))
    match = GeometricMatch(a, b, False, "", len(good), int(inliers.sum()), a_to_b[:2].round(4).tolist(), scale,
                           rotation, (float(a_to_b[0, 2]), float(a_to_b[1, 2])))
    if match.inliers < settings.min_inliers:
        match.reason = f"{match.inliers} inliers < {settings.min_inliers}"
        return match
    if not 1.0 / settings.max_scale <= scale <= settings.max_scale:
        match.reason = f"scale {scale:.3g} outside [1/{settings.max_scale:g}, {settings.max_scale:g}]"
        return match
    if abs(rotation) > settings.max_rotation:
        match.reason = f"rotation {rotation:.1f} deg > {settings.max_rotation:g}"
        return match
    rect_a, rect_b = _rectangle(fa.shape), _rectangle(fb.shape)
    area, _ = _intersection(_apply(a_to_b, rect_a), rect_b)
    match.overlap_b = area / (fb.shape[0] * fb.shape[1])
    match.overlap_a = area / (scale**2 * fa.shape[0] * fa.shape[1])
    # share of the smaller field of view (measured in b's pixels) that the other one covers
    smaller_overlap = area / min(scale**2 * fa.shape[0] * fa.shape[1], fb.shape[0] * fb.shape[1])
    if smaller_overlap < settings.min_overlap:
        match.reason = f"overlap {smaller_overlap:.0%} of the smaller image < {settings.min_overlap:.0%}"
        return match
    # inlier spread over the overlap's bounding box, in a's working coordinates
    b_in_a = _apply(np.linalg.inv(a_to_b), rect_b)
    _, polygon = _intersection(rect_a, b_in_a)
    if polygon is None:
        match.reason = "fields of view do not overlap"
        return match
    box = polygon * fa.factor
    lo, hi = box.min(axis=0), box.max(axis=0)
    span = np.maximum(hi - lo, 1e-6)
    cells = np.clip(((src[inliers] - lo) / span * settings.grid).astype(int), 0, settings.grid - 1)
    occupied = {(int(cx), int(cy)) for cx, cy in cells}
    match.cells = len(occupied)
    n_cols, n_rows = len({c for c, _ in occupied}), len({r for _, r in occupied})
    match.agreement, n_blocks = local_agreement(fa, fb, a_to_b)
    if match.cells < settings.min_cells or n_cols < 2 or n_rows < 2:
        match.reason = (f"inliers in {match.cells} cell(s), {n_rows} row(s), {n_cols} column(s) of the "
                        f"{settings.grid}x{settings.grid} grid (overlay-like; need >= {settings.min_cells}, 2, 2)")
        return match
    if not match.agreement >= settings.min_agreement:  # NaN (no usable block) fails too
        match.reason = (f"aligned images disagree locally (median block NCC {match.agreement:.2f} < "
                        f"{settings.min_agreement:g} over {n_blocks} blocks)")
        return match
    match.confirmed = True
    return match


@dataclass
class CropSearchResult:
    """Confirmed pairs (ids sorted within a pair, pairs sorted) and what the search cost."""

    pairs: list[GeometricMatch]
    n_candidates: int
    n_verified: int
    seconds: dict[str, float]
    rejected: list[GeometricMatch] = field(default_factory=list, repr=False)


def find_crop_duplicates(
    ids: Sequence[str],
    features: Sequence[ImageFeatures],
    settings: CropSearch = CropSearch(),
    *,
    already_linked: Callable[[int, int], bool] | None = None,
    progress: bool = False,
    keep_rejected: bool = False,
) -> CropSearchResult:
    """Candidate pairs from the visual-word index, each confirmed or rejected geometrically.

    ``already_linked(i, j)``: pairs for which it returns True (e.g. one hash cluster) are not
    checked — they are grouped anyway. ``keep_rejected`` keeps the rejected candidates that
    reached the RANSAC fit (for inspecting the thresholds).
    """
    if len(ids) != len(features):
        raise ConfigError(f"crop search: {len(ids)} ids for {len(features)} feature sets")
    t0 = time.perf_counter()
    candidates = candidate_pairs(features, settings)
    t1 = time.perf_counter()
    todo = [(i, j) for i, j in candidates if already_linked is None or not already_linked(i, j)]
    iterator = progress_bar(todo, desc="checking crop/zoom candidates", unit="pair", enabled=progress)
    confirmed, rejected = [], []
    for i, j in iterator:
        first, second = (i, j) if ids[i] <= ids[j] else (j, i)
        match = confirm_pair(features[first], features[second], settings, (ids[first], ids[second]))
        if match.confirmed:
            confirmed.append(match)
        elif keep_rejected and match.transform is not None:
            rejected.append(match)
    t2 = time.perf_counter()
    confirmed.sort(key=lambda m: (m.a, m.b))
    return CropSearchResult(confirmed, len(candidates), len(todo),
                            {"index": round(t1 - t0, 3), "verification": round(t2 - t1, 3)}, rejected)


__all__ = [
    "CropSearch",
    "CropSearchResult",
    "GeometricMatch",
    "ImageFeatures",
    "candidate_pairs",
    "confirm_pair",
    "extract_features",
    "find_crop_duplicates",
]
