"""Image decoding with the checks the spec asks for, EXIF orientation and focal length."""

from __future__ import annotations

import io
from dataclasses import dataclass

import numpy as np

from spatialforge.runner.errors import InvalidImageError

IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".webp")
_EXIF_IFD = 0x8769
_FOCAL_35MM = 0xA405
_FOCAL_LENGTH = 0x920A
_FOCAL_PLANE_X_RES = 0xA20E
_FOCAL_PLANE_UNIT = 0xA210
_UNIT_MM = {2: 25.4, 3: 10.0, 4: 1.0, 5: 0.001}


@dataclass(kw_only=True)
class DecodedImage:
    """An RGB image (H, W, 3) uint8, upright, with what EXIF said about the lens."""

    rgb: np.ndarray
    exif_focal_px: float | None
    orientation: int

    @property
    def height(self) -> int:
        return int(self.rgb.shape[0])

    @property
    def width(self) -> int:
        return int(self.rgb.shape[1])


def is_image_name(name: str) -> bool:
    return name.lower().endswith(IMAGE_EXTENSIONS)


def check_size(name: str, size: int, *, max_bytes: int) -> None:
    """Refuse zero-byte and oversized files before reading them."""
    if size == 0:
        raise InvalidImageError(f"{name}: zero-byte file")
    if size > max_bytes:
        raise InvalidImageError(f"{name}: {size} bytes is more than maxImageBytes {max_bytes}")


def decode_image(name: str, data: bytes, *, max_pixels: int, max_bytes: int) -> DecodedImage:
    """Decode JPEG/PNG/WebP, refuse what the spec forbids, apply EXIF orientation."""
    from PIL import Image, ImageOps, UnidentifiedImageError

    check_size(name, len(data), max_bytes=max_bytes)
    # The spec's maxImagePixels replaces Pillow's process-wide decompression-bomb limit: the
    # header's size is checked below, before any pixel is decoded.
    Image.MAX_IMAGE_PIXELS = None
    try:
        img = Image.open(io.BytesIO(data))
        width, height = img.size
        if width * height > max_pixels:
            raise InvalidImageError(
                f"{name}: {width}x{height} = {width * height} pixels is more than maxImagePixels {max_pixels}"
            )
        if img.format not in ("JPEG", "PNG", "WEBP", "MPO"):
            raise InvalidImageError(f"{name}: format {img.format} is not JPEG, PNG or WebP")
        img.load()
    except InvalidImageError:
        raise
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError, EOFError) as exc:
        raise InvalidImageError(f"{name}: cannot decode image ({exc})") from exc
    exif = img.getexif()
    orientation = int(exif.get(0x0112, 1) or 1)
    upright = ImageOps.exif_transpose(img) or img
    rgb = np.asarray(upright.convert("RGB"))
    if rgb.size == 0:
        raise InvalidImageError(f"{name}: image has no pixels")
    return DecodedImage(rgb=rgb, exif_focal_px=exif_focal_px(exif, rgb.shape[1], rgb.shape[0]), orientation=orientation)


def exif_focal_px(exif: object, width: int, height: int) -> float | None:
    """Focal length in pixels from EXIF: the 35 mm equivalent, else focal length x plane resolution."""
    try:
        ifd = exif.get_ifd(_EXIF_IFD)  # type: ignore[attr-defined]
    except Exception:  # noqa: BLE001 - malformed EXIF is ignored, not fatal
        return None
    try:
        f35 = float(ifd.get(_FOCAL_35MM) or 0)
        if f35 > 0:
            return f35 / 36.0 * max(width, height)
        focal = float(ifd.get(_FOCAL_LENGTH) or 0)
        xres = float(ifd.get(_FOCAL_PLANE_X_RES) or 0)
        unit_mm = _UNIT_MM.get(int(ifd.get(_FOCAL_PLANE_UNIT) or 2))
        if focal > 0 and xres > 0 and unit_mm:
            return focal * xres / unit_mm
    except (TypeError, ValueError, ZeroDivisionError):
        return None
    return None


def heuristic_focal_px(width: int, height: int) -> float:
    """The fallback focal length: 0.9 x the longer side (about a 60 degree field of view)."""
    return 0.9 * max(width, height)
