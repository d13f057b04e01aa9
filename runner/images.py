"""Image decoding: every format and mode a phone or camera writes, to 8-bit RGB, in bounded memory.

Formats: JPEG (and MPO), PNG, WebP, TIFF, HEIC/HEIF (pillow-heif) and AVIF (Pillow's own
decoder). Modes become RGB as an image viewer shows them: 16-bit and float data are scaled
linearly over the type's full range (16-bit 0..65535, float 0.0..1.0, 32-bit integer over the
signed range), never stretched per image; transparency (RGBA, LA, PA, P with a transparent
colour) is composited over white; CMYK, YCbCr, 1-bit, L and palettes convert as Pillow does.

Colour: an embedded ICC profile is converted to sRGB (LittleCMS through Pillow's ImageCms)
before anything else sees the pixels: phones write Display P3. What the decoder had to guess
or leave out goes into `DecodedImage.warnings` (the manifest's per-image `warnings`): an
animated image (only its first frame is used), an EXIF orientation outside 1-8 (taken as 1), an
EXIF focal length that does not fit the image received (see `exif_focal`).

Memory: the header's size is checked against the pixel limit before any pixel is decoded.
With `target_pixels`, a larger image is decoded at reduced size where the format allows it
(JPEG draft mode, a DCT scale of 1/2 to 1/8) and otherwise downscaled right after decoding,
before any conversion, so only the decoder's own buffer is ever full size. WebP is decoded by
OpenCV (one buffer) rather than Pillow (three).
"""

from __future__ import annotations

import functools
import io
import math
import re
import struct
import threading
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from spatialforge.runner.errors import InvalidImageError

FORMATS = ("JPEG", "MPO", "PNG", "WEBP", "TIFF", "HEIF", "AVIF")
BACKGROUND = (255, 255, 255)  # transparent pixels are shown over white
_EXIF_IFD = 0x8769
_ORIENTATION = 0x0112
_FOCAL_35MM = 0xA405
_FOCAL_LENGTH = 0x920A
_FOCAL_PLANE_X_RES = 0xA20E
_FOCAL_PLANE_UNIT = 0xA210
_PIXEL_X, _PIXEL_Y = 0xA002, 0xA003  # the size the EXIF (and its focal-plane resolution) describes
# An EXIF focal length giving a field of view (across the longer side) outside this range is
# taken to describe another image (a crop, a wrong tag) and replaced by the fallback.
FOV_RANGE_DEG = (20.0, 120.0)
_SIZE_TOLERANCE = 0.02  # EXIF and decoded aspect ratios may differ by rounding, no more
# What `probe_image` is given: most headers (EXIF thumbnail included) fit the first; a JPEG
# with large APP segments (maker notes, MPF, depth data) the second; the rest the full decode.
HEADER_BYTES, LONG_HEADER_BYTES = 64 * 1024, 1024 * 1024
_ADDRESS = re.compile(r"<[^<>]* at 0x[0-9A-Fa-f]+>")
_DECODE_ERRORS: tuple[type[BaseException], ...] = (
    OSError, SyntaxError, ValueError, EOFError, KeyError, RuntimeError, IndexError, struct.error, ZeroDivisionError,
)  # what Pillow's plugins raise on damaged data (UnidentifiedImageError is an OSError)
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
    color_profile: str | None = None  # the embedded ICC profile's description, converted to sRGB
    warnings: list[str] = field(default_factory=list)

    @property
    def scale(self) -> float:
        """rgb's size over the input's size (1.0 unless decoded reduced)."""
        return float(self.rgb.shape[1]) / self.width if self.width else 1.0


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


def probe_image(name: str, head: bytes, *, max_pixels: int, complete: bool) -> bool:
    """Refuse what the header alone shows to be unusable: a format not accepted, too many pixels.

    `head` is the file's first bytes, `complete` when that is the whole file. Costs a header
    parse, not a decode: the DepthBatch stage calls it before the model loads. True when the
    header was read and passed; False when it does not fit in `head` (a TIFF whose directory
    sits at the end): `decode_image` checks the same things later.
    """
    from PIL import Image

    register_plugins()
    Image.MAX_IMAGE_PIXELS = None
    try:
        img = Image.open(io.BytesIO(head))
    except _DECODE_ERRORS as exc:
        if complete:
            raise InvalidImageError(f"{name}: cannot decode image ({describe_error(exc)})") from exc
        return False
    with img:
        _check_header(name, img, max_pixels)
    return True


def _check_header(name: str, img: Any, max_pixels: int) -> None:
    width, height = img.size
    if width * height > max_pixels:
        raise InvalidImageError(
            f"{name}: {width}x{height} = {width * height} pixels is more than maxImagePixels {max_pixels}"
        )
    if img.format not in FORMATS:
        raise InvalidImageError(f"{name}: format {img.format} is not one of JPEG, PNG, WebP, TIFF, HEIC or AVIF")


def describe_error(exc: BaseException) -> str:
    """A decoder's exception as stable words: no object addresses (`<_io.BytesIO object at 0x..>`)."""
    from PIL import UnidentifiedImageError

    if isinstance(exc, UnidentifiedImageError):
        return "not a known image format, or its header is damaged"
    text = _ADDRESS.sub("the data", " ".join(str(exc).split()))
    return f"{type(exc).__name__}: {text}" if text else type(exc).__name__


def decode_image(
    name: str, data: bytes, *, max_pixels: int, max_bytes: int, target_pixels: int | None = None
) -> DecodedImage:
    """Decode an image, refuse what the spec forbids, apply EXIF orientation, convert to sRGB.

    `target_pixels`: the largest size the caller needs; a larger image is returned downscaled
    to it (aspect kept), and decoded reduced where the format can.
    """
    from PIL import Image

    check_size(name, len(data), max_bytes=max_bytes)
    register_plugins()
    # The spec's maxImagePixels replaces Pillow's process-wide decompression-bomb limit: the
    # header's size is checked below, before any pixel is decoded.
    Image.MAX_IMAGE_PIXELS = None
    warnings: list[str] = []
    try:
        img = Image.open(io.BytesIO(data))
        _check_header(name, img, max_pixels)
        width, height = img.size
        target = fit_pixels(width, height, target_pixels)
        if img.format in ("JPEG", "MPO") and target != (width, height):
            img.draft(img.mode, target)  # decode at 1/2, 1/4 or 1/8 scale, never below target
        exif = img.getexif()
        mode, source = img.mode, sample_info(img)
        icc = img.info.get("icc_profile")
        warnings += _frames_warning(img)
        if img.format == "WEBP":
            img = _decode_webp(name, data, target)
        else:
            img.load()
        if img.size != target:
            img = _downscale(img, target)
        profile = None
        if icc:
            img, profile, why = to_srgb(img, icc)
            warnings += [why] if why else []
        rgb_img = to_rgb(img, source=source)
    except InvalidImageError:
        raise
    except _DECODE_ERRORS as exc:
        raise InvalidImageError(f"{name}: cannot decode image ({describe_error(exc)})") from exc
    orientation, why = exif_orientation(exif)
    warnings += [why] if why else []
    rgb_img = _upright(rgb_img, orientation)
    rgb = np.asarray(rgb_img)
    if rgb.size == 0:
        raise InvalidImageError(f"{name}: image has no pixels")
    up_w, up_h = (height, width) if orientation in (5, 6, 7, 8) else (width, height)
    focal, why = exif_focal(exif, up_w, up_h)
    warnings += [why] if why else []
    return DecodedImage(
        rgb=rgb,
        exif_focal_px=focal,
        orientation=orientation,
        width=up_w,
        height=up_h,
        source_mode=mode,
        color_profile=profile,
        warnings=warnings,
    )


def exif_orientation(exif: Any) -> tuple[int, str | None]:
    """The EXIF orientation (1-8), and a warning when the tag held anything else (taken as 1)."""
    raw = exif.get(_ORIENTATION)
    if raw is None:
        return 1, None
    try:
        value = int(raw)
    except (TypeError, ValueError):
        value = 0
    if 1 <= value <= 8:
        return value, None
    return 1, f"EXIF orientation {raw!r} is not one of 1-8: taken as 1 (the image as stored)"


def _frames_warning(img: Any) -> list[str]:
    """An animation (WebP, APNG, AVIF) or a multi-page TIFF: only the first frame is decoded.
    MPO's extra frames are a JPEG's secondary images, not frames: nothing to say."""
    if img.format == "MPO" or not getattr(img, "is_animated", False):
        return []
    n = int(getattr(img, "n_frames", 0) or 0)
    what = "multi-page image" if img.format == "TIFF" else "animated image"
    return [f"{what} ({n} frames): only the first frame was used"]


def to_srgb(img: Any, icc: bytes) -> tuple[Any, str | None, str | None]:
    """(image in sRGB, the profile's description, a warning) for an image with an ICC profile.

    RGB, greyscale and CMYK data are converted (relative colorimetric; alpha kept aside); a
    profile that cannot be read or does not fit the mode leaves the pixels as they are, with
    a warning. An sRGB profile converts to (almost) itself: not worth telling apart.
    """
    from PIL import ImageCms

    try:
        src = ImageCms.ImageCmsProfile(io.BytesIO(icc))
        description = " ".join(ImageCms.getProfileDescription(src).split()) or "unnamed"
    except (ImageCms.PyCMSError, OSError, ValueError, TypeError) as exc:
        return img, None, f"embedded ICC profile unreadable ({describe_error(exc)}): colours used as stored"
    if img.mode in ("P", "PA"):
        img = img.convert("RGBA" if _has_alpha(img) else "RGB")
    alpha = None
    if img.mode in ("RGBA", "LA"):
        alpha = img.getchannel("A")
        img = img.convert("RGB" if img.mode == "RGBA" else "L")
    if img.mode not in ("RGB", "L", "CMYK"):
        return img, None, f"embedded ICC profile {description!r} not applied to {img.mode} data: colours used as stored"
    try:
        out = ImageCms.applyTransform(img, _transform(icc, img.mode))
    except (ImageCms.PyCMSError, OSError, ValueError) as exc:
        return img, None, f"embedded ICC profile {description!r} not applied ({describe_error(exc)}): colours used as stored"
    if alpha is not None:
        out.putalpha(alpha)
    return out, description, None


@functools.lru_cache(maxsize=16)
def _transform(icc: bytes, mode: str) -> Any:
    """A profile -> sRGB transform, built once per profile (an image sequence shares one).
    NOCACHE: LittleCMS's one-pixel cache is not thread-safe, and decoders run in threads."""
    from PIL import ImageCms

    return ImageCms.buildTransform(
        ImageCms.ImageCmsProfile(io.BytesIO(icc)), _srgb(), mode, "RGB",
        renderingIntent=ImageCms.Intent.RELATIVE_COLORIMETRIC, flags=ImageCms.Flags.NOCACHE,
    )


@functools.lru_cache(maxsize=1)
def _srgb() -> Any:
    from PIL import ImageCms

    return ImageCms.ImageCmsProfile(ImageCms.createProfile("sRGB"))


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
    """Focal length in pixels of the width x height (upright) image from EXIF; see `exif_focal`."""
    return exif_focal(exif, width, height)[0]


def exif_focal(exif: object, width: int, height: int) -> tuple[float | None, str | None]:
    """(focal length in pixels, None), or (None, why not) when EXIF gives one unfit for this image.

    `width` x `height` is the image as received (upright). FocalLengthIn35mmFilm comes first:
    it is relative to the frame, so it survives resizing. Else FocalLength x
    FocalPlaneXResolution, which counts the pixels of the camera's own image: it is scaled by
    the received size over PixelX/YDimension (the size the EXIF describes), and not used when
    those disagree in aspect ratio (a crop). Either way, a field of view across the longer side
    outside FOV_RANGE_DEG means the tags describe some other image: refused, with the reason.
    (None, None): no usable focal tags at all.
    """
    try:
        ifd = exif.get_ifd(_EXIF_IFD)  # type: ignore[attr-defined]
    except Exception:  # noqa: BLE001 - malformed EXIF is ignored, not fatal
        return None, None
    try:
        f35 = _number(ifd.get(_FOCAL_35MM))
        if f35 > 0:
            focal, how = f35 / 36.0 * max(width, height), f"FocalLengthIn35mmFilm {f35:g} mm"
        else:
            focal_mm, xres = _number(ifd.get(_FOCAL_LENGTH)), _number(ifd.get(_FOCAL_PLANE_X_RES))
            unit_mm = _UNIT_MM.get(int(_number(ifd.get(_FOCAL_PLANE_UNIT)) or 2))
            if not (focal_mm > 0 and xres > 0 and unit_mm):
                return None, None
            focal, how = focal_mm * xres / unit_mm, f"FocalLength {focal_mm:g} mm x FocalPlaneXResolution"
            px, py = int(_number(ifd.get(_PIXEL_X))), int(_number(ifd.get(_PIXEL_Y)))
            if px > 0 and py > 0:  # sides compared sorted: PixelX/Y are the stored, not upright, size
                s_long, s_short = max(width, height) / max(px, py), min(width, height) / min(px, py)
                if abs(s_long - s_short) > _SIZE_TOLERANCE * max(s_long, s_short):
                    return None, (
                        f"EXIF focal length not used: the EXIF describes a {px}x{py} image and this one is "
                        f"{width}x{height} (cropped?); the default focal length was used"
                    )
                focal *= s_long
    except (TypeError, ValueError, ZeroDivisionError, OverflowError):
        return None, None
    fov = math.degrees(2.0 * math.atan(max(width, height) / (2.0 * focal)))
    lo, hi = FOV_RANGE_DEG
    if not lo <= fov <= hi:
        return None, (
            f"EXIF focal length not used: {how} gives {focal:.0f} px, a {fov:.1f} degree field of view for "
            f"{width}x{height} (outside {lo:g}-{hi:g}); the default focal length was used"
        )
    return focal, None


def _number(value: object) -> float:
    """An EXIF number (int, IFDRational, or a 1-tuple some writers use) as a float; 0 when absent."""
    if isinstance(value, tuple):
        value = value[0] if value else 0
    return float(value or 0)  # type: ignore[arg-type]


def heuristic_focal_px(width: int, height: int) -> float:
    """The fallback focal length: 0.9 x the longer side (about a 60 degree field of view)."""
    return 0.9 * max(width, height)
