"""Reading ultrasound images and lesion masks into plain numpy arrays.

Every reader returns the same thing whatever the file holds: an image is ``uint8 [H, W]``
grayscale, a mask is ``bool [H, W]``. Anything that cannot be read becomes a
:class:`~busseg.errors.DataError` naming the file and the problem (never a traceback from
inside Pillow or pydicom); anything that can be read but is unusual (16-bit data, a mask that
is not strictly binary) is read and reported with a :class:`DataWarning`.

Conventions (chosen here because the dataset descriptions leave them open):

- Colour images are converted to luminance with ITU-R BT.601 weights (Pillow's ``"L"``
  conversion); images whose three channels are equal keep their exact grey values. The alpha
  channel of an image is ignored.
- Images with more than 8 bits (16-bit PNG/TIFF, DICOM with ``BitsStored > 8``, float TIFF)
  are rescaled linearly from their own [min, max] range to [0, 255], with a warning: scanners
  rarely use the full 16-bit range, so dividing by 257 would give an almost black image.
- An EXIF orientation tag (phone and some scanner exports) is honoured for images and masks
  alike: pixels are read turned the way image viewers show them, which is how annotators saw
  the scan when they drew its mask. A mask tagged like its image, and a mask drawn on the image
  as shown (untagged), both land on the lesion.
- A multi-frame file (cine DICOM, multi-page TIFF) is refused: which frame carries the lesion
  is not something a reader can guess.
- Masks: any value > 0 in any colour channel is lesion. For a mask whose colour channels are
  all zero but whose alpha channel varies, the alpha channel is the mask. Several mask files
  of one image are combined by their union (logical OR), the usual convention for BUSI.
- Masks whose size differs from the image are an error, except where the dataset's adapter
  allows resizing (STU, whose masks are anti-aliased and stored at another size): such a mask
  is resized bilinearly to the image size and thresholded at half of its own maximum value.
"""

from __future__ import annotations

import logging
import struct
import warnings
from collections.abc import Sequence
from pathlib import Path

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

from busseg.errors import DataError

log = logging.getLogger(__name__)

#: File suffixes read as images (lower case). Files without a suffix are tried as DICOM.
IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff", ".dcm", ".dicom")
DICOM_SUFFIXES = (".dcm", ".dicom", "")

# Pillow refuses very large images as a "decompression bomb"; ultrasound frames are small, so
# anything above this is a wrong file rather than an image to read.
_MAX_PIXELS = 64_000_000


class DataWarning(UserWarning):
    """An input file was read, but something about it deserves the user's attention."""


def _warn(message: str) -> None:
    warnings.warn(message, DataWarning, stacklevel=3)


def is_dicom(path: str | Path) -> bool:
    """True for a DICOM file: ``.dcm``/``.dicom`` suffix or the ``DICM`` magic at byte 128."""
    path = Path(path)
    if path.suffix.lower() in (".dcm", ".dicom"):
        return True
    try:
        with open(path, "rb") as fh:
            fh.seek(128)
            return fh.read(4) == b"DICM"
    except OSError:
        return False


def _rescale_to_uint8(array: np.ndarray, path: Path, what: str) -> np.ndarray:
    """Linear [min, max] -> [0, 255] rescaling of high-bit-depth data, with a warning."""
    array = np.asarray(array, dtype=np.float64)
    if not np.isfinite(array).all():
        raise DataError(f"{path}: {what} contains NaN or infinite values")
    lo, hi = float(array.min()), float(array.max())
    _warn(
        f"{path}: {what} has more than 8 bits per pixel (range {lo:g}..{hi:g}); "
        "rescaled linearly from its own min-max range to 8 bits"
    )
    if hi <= lo:
        return np.zeros(array.shape, np.uint8)
    return np.round((array - lo) * (255.0 / (hi - lo))).astype(np.uint8)


# ----------------------------------------------------------------------------------- Pillow


def _open_pil(path: Path) -> Image.Image:
    """Open and fully decode an image file; every failure becomes a DataError."""
    if not path.exists():
        raise DataError(f"{path}: file not found")
    if not path.is_file():
        raise DataError(f"{path}: not a file")
    if path.stat().st_size == 0:
        raise DataError(f"{path}: empty file (0 bytes)")
    try:
        img = Image.open(path)
    except UnidentifiedImageError:
        raise DataError(
            f"{path}: not a readable image (unsupported format or corrupt header); "
            f"supported: {', '.join(IMAGE_SUFFIXES)}"
        ) from None
    except (OSError, ValueError, SyntaxError) as exc:
        raise DataError(f"{path}: cannot open image ({exc})") from None
    if img.width * img.height > _MAX_PIXELS:
        raise DataError(f"{path}: image of {img.width}x{img.height} pixels is implausibly large")
    if getattr(img, "n_frames", 1) > 1:
        raise DataError(
            f"{path}: file holds {img.n_frames} frames; export the annotated frame as a "
            "single image"
        )
    try:
        img.load()
    except (OSError, ValueError, SyntaxError, EOFError, Image.DecompressionBombError) as exc:
        raise DataError(f"{path}: truncated or corrupt image data ({exc})") from None
    if img.width == 0 or img.height == 0:
        raise DataError(f"{path}: image has no pixels ({img.width}x{img.height})")
    return _as_shown(img, path)


#: EXIF tag 274: how the stored pixels must be turned for display (1 = as stored).
_EXIF_ORIENTATION = 0x0112


def _as_shown(img: Image.Image, path: Path) -> Image.Image:
    """``img`` turned as its EXIF orientation says (the way viewers show it)."""
    try:
        orientation = img.getexif().get(_EXIF_ORIENTATION, 1)
    except (OSError, ValueError, SyntaxError, struct.error) as exc:
        log.debug("%s: unreadable EXIF block ignored (%s)", path, exc)
        return img
    if orientation in (None, 1):
        return img
    if orientation not in range(2, 9):
        _warn(f"{path}: EXIF orientation {orientation!r} is not a valid value (1-8); read as stored")
        return img
    turned = ImageOps.exif_transpose(img)
    img.close()
    return turned


def _pil_to_gray(img: Image.Image, path: Path) -> np.ndarray:
    mode = img.mode
    if mode == "L":
        return np.asarray(img, dtype=np.uint8).copy()
    if mode == "1":
        return np.asarray(img.convert("L"), dtype=np.uint8).copy()
    if mode in ("I;16", "I;16L", "I;16B", "I;16N", "I", "F"):
        return _rescale_to_uint8(np.asarray(img), path, "image")
    if mode == "P":
        img = img.convert("RGBA" if "transparency" in img.info else "RGB")
        mode = img.mode
    if mode in ("LA", "La"):
        return np.asarray(img.getchannel("L"), dtype=np.uint8).copy()
    if mode in ("RGB", "RGBA", "RGBa", "RGBX", "CMYK", "YCbCr"):
        rgb = img.convert("RGB")
        arr = np.asarray(rgb, dtype=np.uint8)
        if (arr[..., 0] == arr[..., 1]).all() and (arr[..., 1] == arr[..., 2]).all():
            return arr[..., 0].copy()
        return np.asarray(rgb.convert("L"), dtype=np.uint8).copy()
    raise DataError(f"{path}: unsupported image mode {mode!r}")


# ------------------------------------------------------------------------------------ DICOM


def _read_dicom_dataset(path: Path, *, pixels: bool):
    import pydicom
    from pydicom.errors import InvalidDicomError

    if not path.exists():
        raise DataError(f"{path}: file not found")
    try:
        return pydicom.dcmread(path, stop_before_pixels=not pixels)
    except InvalidDicomError as exc:
        raise DataError(f"{path}: not a valid DICOM file ({exc})") from None
    except Exception as exc:  # pydicom raises many types on truncated/corrupt files
        raise DataError(f"{path}: cannot read DICOM file ({type(exc).__name__}: {exc})") from None


def _dicom_to_gray(path: Path) -> np.ndarray:
    ds = _read_dicom_dataset(path, pixels=True)
    if "PixelData" not in ds:
        raise DataError(f"{path}: DICOM file has no pixel data")
    frames = int(getattr(ds, "NumberOfFrames", 1) or 1)
    if frames > 1:
        raise DataError(
            f"{path}: DICOM file holds {frames} frames (cine loop); export the annotated "
            "frame as a single image"
        )
    try:
        arr = ds.pixel_array  # pydicom converts YBR colour spaces to RGB
    except Exception as exc:
        raise DataError(
            f"{path}: cannot decode DICOM pixel data ({type(exc).__name__}: {exc}); "
            "compressed transfer syntaxes may need an extra pydicom decoder plugin"
        ) from None
    photometric = str(getattr(ds, "PhotometricInterpretation", "MONOCHROME2"))
    if arr.ndim == 3:
        if arr.shape[-1] not in (3, 4):
            raise DataError(f"{path}: unexpected DICOM pixel array shape {arr.shape}")
        rgb = arr[..., :3].astype(np.float64)
        arr = 0.299 * rgb[..., 0] + 0.587 * rgb[..., 1] + 0.114 * rgb[..., 2]
        if rgb.max() <= 255:
            arr = np.round(arr)
    elif arr.ndim != 2:
        raise DataError(f"{path}: unexpected DICOM pixel array shape {arr.shape}")
    if photometric == "MONOCHROME1":  # 0 is white in MONOCHROME1
        arr = arr.max() - arr.astype(np.float64) + arr.min()
    bits = int(getattr(ds, "BitsStored", 8) or 8)
    if bits <= 8 and arr.min() >= 0 and arr.max() <= 255:
        return np.asarray(arr).astype(np.uint8)
    return _rescale_to_uint8(arr, path, "DICOM image")


# ----------------------------------------------------------------------------- public API


def read_image(path: str | Path) -> np.ndarray:
    """Read an image file as ``uint8 [H, W]`` grayscale.

    Reads PNG (L, RGB, RGBA, 1-bit, palette, 16-bit), JPEG, BMP, TIFF and DICOM. Raises
    :class:`DataError` naming the file for missing, unreadable, truncated, multi-frame or
    unsupported files; warns (:class:`DataWarning`) when 16-bit data is rescaled.
    """
    path = Path(path)
    if path.suffix.lower() in DICOM_SUFFIXES and is_dicom(path):
        return _dicom_to_gray(path)
    with _open_pil(path) as img:
        return _pil_to_gray(img, path)


def to_gray_uint8(image, name: str = "image") -> np.ndarray:
    """An image already in memory as ``uint8 [H, W]`` grayscale, by the rules files follow.

    Accepts a Pillow image (any mode :func:`read_image` reads) or a NumPy array: ``[H, W]``
    grayscale, or ``[H, W, 3]`` / ``[H, W, 4]`` RGB(A) converted like a colour file (BT.601
    luminance, alpha ignored). ``uint8`` values are kept; floating-point arrays within [0, 1]
    are read as intensities in [0, 1] (x 255); any other range or integer type is rescaled
    from its own [min, max] with a warning, as 16-bit files are. ``name`` names the image in
    errors."""
    if isinstance(image, Image.Image):
        if image.width == 0 or image.height == 0:
            raise DataError(f"{name}: image has no pixels ({image.width}x{image.height})")
        return _pil_to_gray(image, Path(name))
    array = np.asarray(image)
    if array.ndim == 3 and array.shape[-1] in (3, 4):
        if array.dtype == np.uint8:
            return _pil_to_gray(Image.fromarray(np.ascontiguousarray(array[..., :3])), Path(name))
        if _channels_equal(array):  # a grey image stored in three channels
            return to_gray_uint8(array[..., 0], name)
        raise DataError(f"{name}: a colour image array must be uint8, got {array.dtype}")
    if array.ndim != 2 or 0 in array.shape:
        raise DataError(f"{name}: expected an image [H, W] or [H, W, 3|4], got an array of shape {array.shape}")
    if array.dtype == np.uint8:
        return array.copy()
    if array.dtype == bool:
        return array.astype(np.uint8) * 255
    if not np.issubdtype(array.dtype, np.number):
        raise DataError(f"{name}: expected numeric pixel values, got {array.dtype}")
    if np.issubdtype(array.dtype, np.floating) and np.isfinite(array).all() and array.min() >= 0 and array.max() <= 1:
        return np.round(array.astype(np.float64) * 255).astype(np.uint8)
    return _rescale_to_uint8(array, Path(name), "image")


def _channels_equal(array: np.ndarray) -> bool:
    return bool((array[..., 0] == array[..., 1]).all() and (array[..., 1] == array[..., 2]).all())


def _read_mask_values(path: Path) -> np.ndarray:
    """One mask file as a 2-D numeric array (per-pixel maximum over colour channels)."""
    if path.suffix.lower() in DICOM_SUFFIXES and is_dicom(path):
        return _dicom_to_gray(path).astype(np.float64)
    with _open_pil(path) as img:
        if img.mode == "P":
            img = img.convert("RGBA" if "transparency" in img.info else "RGB")
        if img.mode in ("1", "L", "I;16", "I;16L", "I;16B", "I;16N", "I", "F"):
            return np.asarray(img).astype(np.float64)
        if img.mode in ("LA", "RGBA", "RGBa"):
            arr = np.asarray(img.convert("RGBA" if img.mode != "LA" else "LA"))
            colour, alpha = arr[..., :-1].max(axis=-1), arr[..., -1]
            if colour.max() == 0 and alpha.min() != alpha.max():
                return alpha.astype(np.float64)
            return colour.astype(np.float64)
        try:
            arr = np.asarray(img.convert("RGB"))
        except (ValueError, OSError) as exc:
            raise DataError(f"{path}: unsupported mask mode {img.mode!r} ({exc})") from None
        return arr.max(axis=-1).astype(np.float64)


def _resize_float(values: np.ndarray, shape: tuple[int, int]) -> np.ndarray:
    """Bilinear resize of a float array to ``shape`` (rows, cols)."""
    img = Image.fromarray(values.astype(np.float32), mode="F")
    return np.asarray(img.resize((shape[1], shape[0]), Image.BILINEAR), dtype=np.float64)


def read_mask(
    paths: Sequence[str | Path],
    shape: tuple[int, int] | None = None,
    *,
    allow_resize: bool = False,
) -> np.ndarray:
    """Read the lesion mask of one image: the union of ``paths`` as ``bool [H, W]``.

    Args:
        paths: every mask file of the image (BUSI has ``_mask``, ``_mask_1``...). An empty
            sequence gives an all-background mask of ``shape`` (normal images, unlabelled scans).
        shape: the image's (rows, cols). A mask of another size raises :class:`DataError`
            naming the file, unless ``allow_resize``.
        allow_resize: for anti-aliased masks stored at another size (STU): each mask is resized
            bilinearly to ``shape`` and thresholded at half of its maximum value.

    Masks that are not strictly two-valued are thresholded at > 0 with a :class:`DataWarning`
    (not when ``allow_resize``: anti-aliased edges are expected there).
    """
    paths = [Path(p) for p in paths]
    if not paths:
        if shape is None:
            raise DataError("read_mask: no mask file given and no shape to make an empty mask")
        return np.zeros(shape, dtype=bool)
    union: np.ndarray | None = None
    for path in paths:
        values = _read_mask_values(path)
        if allow_resize:
            if shape is None:
                raise DataError(f"{path}: resizing a mask needs the image shape")
            peak = float(values.max())
            if values.shape != tuple(shape):
                values = _resize_float(values, shape)
            mask = values > 0.5 * peak if peak > 0 else np.zeros(shape, bool)
        else:
            target = tuple(shape) if shape is not None else (union.shape if union is not None else None)
            if target is not None and values.shape != target:
                raise DataError(
                    f"{path}: mask size {values.shape[1]}x{values.shape[0]} (WxH) differs from "
                    f"the image size {target[1]}x{target[0]}"
                )
            peak = float(values.max())
            if peak > 0 and bool(((values > 0) & (values < peak)).any()):
                levels = np.unique(values)
                _warn(
                    f"{path}: mask is not binary ({levels.size} distinct values, e.g. "
                    f"{', '.join(f'{v:g}' for v in levels[:4])}...); thresholded at > 0"
                )
            mask = values > 0
        union = mask if union is None else (union | mask)
    assert union is not None
    return union


def read_pixel_spacing(path: str | Path) -> tuple[float, float] | None:
    """(row, column) pixel spacing in mm of a DICOM file, or ``None`` when not recorded.

    Looks at ``PixelSpacing``, then ``ImagerPixelSpacing``, then the first region of the
    ultrasound ``SequenceOfUltrasoundRegions`` whose physical units are cm (code 3), whose
    ``PhysicalDeltaY``/``PhysicalDeltaX`` are converted to mm. Non-DICOM files give ``None``.
    """
    path = Path(path)
    if not (path.suffix.lower() in DICOM_SUFFIXES and is_dicom(path)):
        return None
    ds = _read_dicom_dataset(path, pixels=False)
    for keyword in ("PixelSpacing", "ImagerPixelSpacing"):
        value = getattr(ds, keyword, None)
        if value is not None and len(value) == 2:
            row, col = float(value[0]), float(value[1])
            if row > 0 and col > 0:
                return (row, col)
    for region in getattr(ds, "SequenceOfUltrasoundRegions", []) or []:
        units_x = getattr(region, "PhysicalUnitsXDirection", None)
        units_y = getattr(region, "PhysicalUnitsYDirection", None)
        dx = getattr(region, "PhysicalDeltaX", None)
        dy = getattr(region, "PhysicalDeltaY", None)
        if units_x == 3 and units_y == 3 and dx and dy and dx > 0 and dy > 0:
            return (abs(float(dy)) * 10.0, abs(float(dx)) * 10.0)
    return None


def read_sample(record) -> tuple[np.ndarray, np.ndarray]:
    """Image (``uint8 [H, W]``) and mask (``bool [H, W]``) of a :class:`SampleRecord`.

    The mask is resized to the image only when the record's adapter allows it
    (``record.extra["mask_resize"]``, set for STU).
    """
    image = read_image(record.image_path)
    mask = read_mask(
        record.mask_paths,
        shape=image.shape,
        allow_resize=bool(record.extra.get("mask_resize", False)),
    )
    return image, mask
