"""Image decoding: every format and mode a phone or camera writes, to 8-bit RGB, in bounded memory.

Formats: JPEG (and MPO), PNG, WebP, TIFF, HEIC/HEIF (pillow-heif) and AVIF (Pillow's own
decoder). Modes become RGB as an image viewer shows them: 16-bit and float data are scaled
linearly over the type's full range (16-bit 0..65535, float 0.0..1.0, 32-bit integer over the
signed range), never stretched per image; transparency (RGBA, LA, PA, P with a transparent
colour) is composited over white; CMYK, YCbCr, 1-bit, L and palettes convert as Pillow does.

Memory: the header's size is checked against the pixel limit before any pixel is decoded.
With `target_pixels`, a larger image is decoded at reduced size where the format allows it
(JPEG draft mode, a DCT scale of 1/2 to 1/8) and otherwise downscaled right after decoding,
before any conversion, so only the decoder's own buffer is ever full size. WebP is decoded by
OpenCV (one buffer) rather than Pillow (three).
"""

from __future__ import annotations

import io
import math
import threading
from dataclasses import dataclass
from typing import Any

import numpy as np

from spatialforge.runner.errors import InvalidImageError

IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".webp", ".tif", ".tiff", ".heic", ".heif", ".avif")
FORMATS = ("JPEG", "MPO", "PNG", "WEBP", "TIFF", "HEIF", "AVIF")
BACKGROUND = (255, 255, 255)  # transparent pixels are shown over white
_EXIF_IFD = 0x8769
_ORIENTATION = 0x0112
_FOCAL_35MM = 0xA405
_FOCAL_LENGTH = 0x920A
_FOCAL_PLANE_X_RES = 0xA20E
_FOCAL_PLANE_UNIT = 0xA210
_UNIT_MM = {2: 25.4, 3: 10.0, 4: 1.0, 5: 0.001}
_TIFF_BITS, _TIFF_SAMPLE_FORMAT = 258, 339
_plugins = threading.Lock()
_plugins_ready = False


@dataclass(kw_only=True)
class DecodedImage:
    """An RGB image (h, w, 3) uint8, upright, with the input's own upright size and what EXIF
    said about the lens. `rgb` is smaller than width x height when it was decoded reduced."""

    rgb: np.ndarray
    exif_focal_px: float | None
    orientation: int
    width: int
    height: int
    source_mode: str = "RGB"

    @property
    def scale(self) -> float:
        """rgb's size over the input's size (1.0 unless decoded reduced)."""
        return float(self.rgb.shape[1]) / self.width if self.width else 1.0


def is_image_name(name: str) -> bool:
    return name.lower().endswith(IMAGE_EXTENSIONS)


def check_size(name: str, size: int, *, max_bytes: int) -> None:
    """Refuse zero-byte and oversized files before reading them."""
    if size == 0:
        raise InvalidImageError(f"{name}: zero-byte file")
    if size > max_bytes:
        raise InvalidImageError(f"{name}: {size} bytes is more than maxImageBytes {max_bytes}")


def fit_pixels(width: int, height: int, max_pixels: int | None) -> tuple[int, int]:
    """(w, h) scaled down, aspect kept, so that w x h <= max_pixels; unchanged when it fits."""
    if not max_pixels or width * height <= max_pixels:
        return width, height
    s = math.sqrt(max_pixels / (width * height))
    w, h = max(1, int(width * s)), max(1, int(height * s))
    while w * h > max_pixels:  # floating-point edge
        w, h = max(1, w - 1), max(1, h - 1) if h > 1 else 1
    return w, h


def register_plugins() -> None:
    """HEIC/HEIF through pillow-heif (once per process); Pillow decodes AVIF itself."""
    global _plugins_ready
    with _plugins:
        if _plugins_ready:
            return
        try:
            from pillow_heif import register_heif_opener
        except ImportError:  # HEIC then fails with "cannot decode", naming the format
            pass
        else:
            register_heif_opener()
        _plugins_ready = True


def decode_image(
    name: str, data: bytes, *, max_pixels: int, max_bytes: int, target_pixels: int | None = None
) -> DecodedImage:
    """Decode an image, refuse what the spec forbids, apply EXIF orientation, convert to RGB.

    `target_pixels`: the largest size the caller needs; a larger image is returned downscaled
    to it (aspect kept), and decoded reduced where the format can.
    """
    from PIL import Image, UnidentifiedImageError

    check_size(name, len(data), max_bytes=max_bytes)
    register_plugins()
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
        if img.format not in FORMATS:
            raise InvalidImageError(f"{name}: format {img.format} is not one of JPEG, PNG, WebP, TIFF, HEIC or AVIF")
        target = fit_pixels(width, height, target_pixels)
        if img.format in ("JPEG", "MPO") and target != (width, height):
            img.draft(img.mode, target)  # decode at 1/2, 1/4 or 1/8 scale, never below target
        exif = img.getexif()
        mode, source = img.mode, sample_info(img)
        if img.format == "WEBP":
            img = _decode_webp(name, data, target)
        else:
            img.load()
        if img.size != target:
            img = _downscale(img, target)
        rgb_img = to_rgb(img, source=source)
    except InvalidImageError:
        raise
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError, EOFError, KeyError, RuntimeError) as exc:
        raise InvalidImageError(f"{name}: cannot decode image ({type(exc).__name__}: {exc})") from exc
    orientation = int(exif.get(_ORIENTATION, 1) or 1)
    rgb_img = _upright(rgb_img, orientation)
    rgb = np.asarray(rgb_img)
    if rgb.size == 0:
        raise InvalidImageError(f"{name}: image has no pixels")
    up_w, up_h = (height, width) if orientation in (5, 6, 7, 8) else (width, height)
    return DecodedImage(
        rgb=rgb,
        exif_focal_px=exif_focal_px(exif, up_w, up_h),
        orientation=orientation,
        width=up_w,
        height=up_h,
        source_mode=mode,
    )


def sample_info(img: Any) -> dict[str, int]:
    """What the file says about its samples (TIFF bits and sample format), for mode I."""
    tags = getattr(img, "tag_v2", None) or {}
    bits = tags.get(_TIFF_BITS)
    fmt = tags.get(_TIFF_SAMPLE_FORMAT)
    out: dict[str, int] = {}
    if bits:
        out["bits"] = int(bits[0] if isinstance(bits, tuple) else bits)
    if fmt:
        out["sample_format"] = int(fmt[0] if isinstance(fmt, tuple) else fmt)
    if getattr(img, "format", None) == "PNG":
        out["bits"] = 16  # Pillow's mode I from a PNG is a 16-bit greyscale
    return out


def _decode_webp(name: str, data: bytes, size: tuple[int, int]) -> Any:
    """WebP through OpenCV's libwebp binding: one full-size buffer (Pillow's decoder holds three,
    ~1 GB at 64 MP), downscaled to `size` at once. First frame of an animation; alpha kept."""
    import cv2
    from PIL import Image

    arr = cv2.imdecode(np.frombuffer(data, np.uint8), cv2.IMREAD_UNCHANGED)
    if arr is None or arr.ndim != 3 or arr.shape[2] not in (3, 4):
        raise InvalidImageError(f"{name}: cannot decode image (WebP)")
    if (arr.shape[1], arr.shape[0]) != size:
        arr = cv2.resize(arr, size, interpolation=cv2.INTER_AREA)
    alpha = arr.shape[2] == 4
    arr = cv2.cvtColor(arr, cv2.COLOR_BGRA2RGBA if alpha else cv2.COLOR_BGR2RGB)
    return Image.fromarray(arr)


def _downscale(img: Any, size: tuple[int, int]) -> Any:
    """Resize in the image's own mode (so conversions run on the small image)."""
    from PIL import Image

    if img.mode in ("1", "P", "PA", "CMYK", "YCbCr", "LAB", "HSV"):
        img = img.convert("RGBA" if _has_alpha(img) else "RGB")
    return img.resize(size, Image.Resampling.LANCZOS, reducing_gap=3.0)


def _has_alpha(img: Any) -> bool:
    return img.mode in ("RGBA", "LA", "La", "RGBa", "PA") or (img.mode in ("P", "L", "RGB") and "transparency" in img.info)


def to_rgb(img: Any, *, source: dict[str, int] | None = None) -> Any:
    """Any Pillow mode -> an RGB Pillow image, as a viewer shows it (see the module doc)."""
    from PIL import Image

    mode = img.mode
    if mode == "RGB" and "transparency" not in img.info:
        return img
    if mode.startswith("I;16") or mode in ("I", "F"):
        lo, hi = _full_range(mode, source or {})
        grey = np.asarray(img)
        out = np.empty(grey.shape, np.uint8)
        for r0 in range(0, grey.shape[0], 256):  # row blocks: float temporaries stay small
            block = grey[r0 : r0 + 256].astype(np.float64 if mode == "I" else np.float32)
            np.clip(np.rint((block - lo) * (255.0 / (hi - lo))), 0, 255, out=block)
            out[r0 : r0 + 256] = block
        return Image.fromarray(out).convert("RGB")
    if _has_alpha(img):
        rgba = img.convert("RGBA")
        background = Image.new("RGB", rgba.size, BACKGROUND)
        background.paste(rgba, mask=rgba.getchannel("A"))
        return background
    return img.convert("RGB")


def _full_range(mode: str, source: dict[str, int]) -> tuple[float, float]:
    """The value range a viewer maps to black..white for a high-bit-depth mode."""
    if mode.startswith("I;16"):
        return 0.0, 65535.0
    if mode == "F":
        return 0.0, 1.0
    if source.get("bits", 32) <= 16:  # mode I holding 16-bit samples (PNG, 16-bit TIFF)
        return 0.0, 65535.0
    if source.get("sample_format") == 1:  # unsigned 32-bit
        return 0.0, 4294967295.0
    return -2147483648.0, 2147483647.0


def _upright(img: Any, orientation: int) -> Any:
    """Apply an EXIF orientation (as ImageOps.exif_transpose does, on the already-small image)."""
    from PIL import Image

    method = {
        2: Image.Transpose.FLIP_LEFT_RIGHT,
        3: Image.Transpose.ROTATE_180,
        4: Image.Transpose.FLIP_TOP_BOTTOM,
        5: Image.Transpose.TRANSPOSE,
        6: Image.Transpose.ROTATE_270,
        7: Image.Transpose.TRANSVERSE,
        8: Image.Transpose.ROTATE_90,
    }.get(orientation)
    return img.transpose(method) if method is not None else img


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
