"""Every format and Pillow mode a user's photo may come in, decoded to RGB as a viewer shows it."""

from __future__ import annotations

import io
import json
from pathlib import Path

import cv2
import numpy as np
import pytest
from PIL import Image

from spatialforge.runner import run_local
from spatialforge.crds.v1alpha1.depthbatch import is_image_name
from spatialforge.runner.images import decode_image, fit_pixels

LIMITS = {"max_pixels": 10**8, "max_bytes": 10**8}


def _enc(img: Image.Image, fmt: str, **kw) -> bytes:
    if fmt == "HEIF":
        from pillow_heif import register_heif_opener

        register_heif_opener()
    buf = io.BytesIO()
    img.save(buf, format=fmt, **kw)
    return buf.getvalue()


def _grey16() -> np.ndarray:
    """A dark 16-bit frame (values 1000..3000, as a 12-bit sensor writes) with a black and a white band."""
    a = np.linspace(1000, 3000, 60, dtype=np.float64)[None, :].repeat(40, 0).astype(np.uint16)
    a[:4] = 0
    a[-4:] = 65535
    return a


def _palette_with_transparency() -> bytes:
    p = Image.new("P", (60, 40), 0)
    p.putpalette([0, 0, 0, 200, 30, 30])
    p.paste(1, (0, 0, 30, 40))
    return _enc(p, "PNG", transparency=0)


def _rgb16_png() -> bytes:
    bgr = np.zeros((40, 60, 3), np.uint16)
    bgr[..., 2] = 65535  # red, full
    bgr[..., 1] = 32896  # green, half (128 x 257)
    ok, buf = cv2.imencode(".png", bgr)
    assert ok
    return buf.tobytes()


# name -> (file bytes, Pillow mode it opens as, {(row, col): expected RGB}, tolerance)
CASES = {
    "png-I;16": lambda: (_enc(Image.fromarray(_grey16()), "PNG"), "I;16", {(0, 0): 0, (39, 0): 255, (20, 0): 4, (20, 59): 12}, 0),
    "tiff-I;16": lambda: (_enc(Image.fromarray(_grey16()), "TIFF"), "I;16", {(0, 0): 0, (39, 0): 255, (20, 0): 4, (20, 59): 12}, 0),
    "tiff-I-int32": lambda: (
        _enc(Image.fromarray(np.full((40, 60), 2**30, np.int32)), "TIFF"), "I", {(5, 5): 191}, 1,
    ),
    "tiff-F": lambda: (
        _enc(Image.fromarray(np.linspace(-0.5, 1.5, 60, dtype=np.float32)[None].repeat(40, 0)), "TIFF"),
        "F", {(5, 0): 0, (5, 14): 0, (5, 30): 132, (5, 59): 255}, 1,  # -0.5 + 30 x 2/59 = 0.517 -> 132
    ),
    "png-LA": lambda: (_enc(Image.new("LA", (60, 40), (0, 0)), "PNG"), "LA", {(5, 5): 255}, 0),
    "png-P-transparency": lambda: (_palette_with_transparency(), "P", {(5, 5): (200, 30, 30), (5, 50): 255}, 0),
    "png-RGBA-half": lambda: (_enc(Image.new("RGBA", (60, 40), (255, 0, 0, 128)), "PNG"), "RGBA", {(5, 5): (255, 127, 127)}, 1),
    "webp-RGBA": lambda: (_enc(Image.new("RGBA", (60, 40), (0, 0, 255, 0)), "WEBP", lossless=True), "RGBA", {(5, 5): 255}, 0),
    "jpeg-CMYK": lambda: (_enc(Image.new("CMYK", (60, 40), (0, 255, 255, 0)), "JPEG", quality=95), "CMYK", {(5, 5): (255, 0, 0)}, 3),
    "tiff-CMYK": lambda: (_enc(Image.new("CMYK", (60, 40), (0, 0, 0, 255)), "TIFF"), "CMYK", {(5, 5): 0}, 0),
    "png-1": lambda: (_enc(Image.new("1", (60, 40), 1), "PNG"), "1", {(5, 5): 255}, 0),
    "png-L": lambda: (_enc(Image.new("L", (60, 40), 77), "PNG"), "L", {(5, 5): 77}, 0),
    "png-RGB-16bit": lambda: (_rgb16_png(), "RGB", {(5, 5): (255, 128, 0)}, 0),
    "heic": lambda: (_enc(Image.new("RGB", (64, 48), (10, 200, 30)), "HEIF", quality=95), "RGB", {(5, 5): (10, 200, 30)}, 4),
    "avif": lambda: (_enc(Image.new("RGB", (64, 48), (10, 200, 30)), "AVIF", quality=95), "RGB", {(5, 5): (10, 200, 30)}, 4),
}


@pytest.mark.parametrize("case", sorted(CASES))
def test_mode_converts_like_a_viewer(case):
    data, mode, expected, tol = CASES[case]()
    decoded = decode_image(case, data, **LIMITS)
    assert decoded.source_mode == mode
    assert decoded.rgb.dtype == np.uint8 and decoded.rgb.ndim == 3 and decoded.rgb.shape[2] == 3
    assert (decoded.width, decoded.height) == (decoded.rgb.shape[1], decoded.rgb.shape[0])
    for (r, c), want in expected.items():
        want = np.broadcast_to(np.asarray(want), (3,))
        got = decoded.rgb[r, c].astype(int)
        assert np.all(np.abs(got - want) <= tol), (case, (r, c), got.tolist(), want.tolist())


def test_sixteen_bit_is_never_stretched_per_image():
    """Two dark frames with different ranges keep their own brightness (a viewer's mapping)."""
    a = decode_image("a.png", _enc(Image.fromarray(np.full((8, 8), 2570, np.uint16)), "PNG"), **LIMITS)
    b = decode_image("b.png", _enc(Image.fromarray(np.full((8, 8), 25700, np.uint16)), "PNG"), **LIMITS)
    assert a.rgb[0, 0].tolist() == [10, 10, 10] and b.rgb[0, 0].tolist() == [100, 100, 100]


@pytest.mark.parametrize("fmt", ["JPEG", "PNG", "WEBP", "TIFF"])
def test_decode_to_a_target_size(fmt, rgb_image):
    img = Image.fromarray(rgb_image(600, 800, 3))
    decoded = decode_image(f"x.{fmt}", _enc(img, fmt), target_pixels=60_000, **LIMITS)
    h, w = decoded.rgb.shape[:2]
    assert (decoded.width, decoded.height) == (800, 600)  # the input's size is kept for the manifest
    assert w * h <= 60_000 and abs(w / h - 4 / 3) < 0.02 and w >= 280
    assert (w, h) == fit_pixels(800, 600, 60_000)
    small = np.asarray(img.resize((w, h), Image.Resampling.LANCZOS)).astype(int)
    assert np.abs(decoded.rgb.astype(int) - small).mean() < 12


def test_reduced_decode_keeps_the_exif_orientation(rgb_image):
    raw = rgb_image(200, 400)
    exif = Image.Exif()
    exif[0x0112] = 6
    data = _enc(Image.fromarray(raw), "JPEG", exif=exif.tobytes(), quality=95)
    decoded = decode_image("rot.jpg", data, target_pixels=5_000, **LIMITS)
    assert (decoded.width, decoded.height) == (200, 400)
    h, w = decoded.rgb.shape[:2]
    assert h > w and h * w <= 5_000


def test_image_names():
    for name in ("a.JPG", "b.jpeg", "c.png", "d.webp", "e.tif", "f.TIFF", "g.heic", "h.HEIF", "i.avif"):
        assert is_image_name(name), name
    assert not is_image_name("notes.txt") and not is_image_name("clip.gif")


def test_every_format_runs_end_to_end(tmp_path, model_dir, make_manifest):
    files = {
        "grey16.png": _enc(Image.fromarray(_grey16()), "PNG"),
        "scan.tiff": _enc(Image.fromarray(_grey16()), "TIFF"),
        "float.tif": _enc(Image.fromarray(np.full((40, 60), 0.25, np.float32)), "TIFF"),
        "phone.heic": _enc(Image.new("RGB", (64, 48), (10, 200, 30)), "HEIF"),
        "phone.avif": _enc(Image.new("RGB", (64, 48), (10, 200, 30)), "AVIF"),
        "logo.png": _palette_with_transparency(),
        "print.jpg": _enc(Image.new("CMYK", (60, 40), (0, 255, 255, 0)), "JPEG"),
    }
    (tmp_path / "in").mkdir()
    for name, data in files.items():
        (tmp_path / "in" / name).write_bytes(data)
    outcome = run_local(make_manifest("DepthBatch", {"inputs": ["file://in/"], "output": {"uri": "file://out"}}), show_progress=False)
    assert outcome.exit_code == 0, outcome.reason
    manifest = json.loads(Path(outcome.results[0].manifest_uri.removeprefix("file://")).read_text())
    modes = {Path(r["input"]).name: r["inputMode"] for r in manifest["images"]}
    assert modes == {"float.tif": "F", "grey16.png": "I;16", "logo.png": "P", "phone.avif": "RGB", "phone.heic": "RGB",
                     "print.jpg": "CMYK", "scan.tiff": "I;16"}
