"""The depth server's answers by Accept (spatialforge/depth_formats.py, runner/serve/encoding.py):
each format from a real server process on the tiny models, checked value for value against the
float32 NPY answer of the same image; 406 for what it cannot give; the PNG writer lossless for
any uint16 image as read back by OpenCV and Pillow."""

from __future__ import annotations

import base64
import io
import json

import cv2
import httpx
import numpy as np
import pytest
from PIL import Image

from spatialforge import depth_formats
from spatialforge.runner.serve import encoding
from spatialforge.runner.stages.depth import quantize_png16
from tests import timeouts
from tests.runner.test_serve import serve


def _jpeg(rgb: np.ndarray) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(rgb).save(buf, format="JPEG", quality=92)
    return buf.getvalue()


def _post(url: str, data: bytes, accept: str | None = None, **params: str) -> httpx.Response:
    headers = {"Accept": accept} if accept is not None else {}
    return httpx.post(url + "/v1/depth", content=data, headers=headers, params=params, timeout=timeouts.SHORT)


def _png_values(data: bytes) -> np.ndarray:
    values = cv2.imdecode(np.frombuffer(data, np.uint8), cv2.IMREAD_UNCHANGED)
    assert values is not None and values.dtype == np.uint16
    from_pillow = np.asarray(Image.open(io.BytesIO(data)))
    assert np.array_equal(from_pillow.astype(np.uint16), values), "OpenCV and Pillow read the PNG differently"
    return values


@pytest.mark.parametrize("variant", ["relative", "metric-indoor"])
def test_every_format_is_the_npy_map_losslessly(tmp_path, model_dir, rgb_image, variant):
    data = _jpeg(rgb_image(60, 80, 3))
    with serve(tmp_path, model_dir, "--variant", variant) as server:
        npy = _post(server.url, data, "application/x-npy")
        assert npy.status_code == 200, npy.text
        assert npy.headers["content-type"] == "application/x-npy"
        depth = np.load(io.BytesIO(npy.content), allow_pickle=False)
        assert depth.dtype == np.float32 and depth.shape == (60, 80)
        assert npy.headers["X-Depth-Shape"] == "60,80" and npy.headers["X-Depth-Dtype"] == "<f4"
        assert float(npy.headers["X-Depth-Scale"]) == 1.0
        assert json.loads(npy.headers["X-Depth-Metadata"])["scale"] == 1.0
        assert np.isfinite(depth).all() and depth.max() > 0

        raw = _post(server.url, data, "application/octet-stream")
        assert raw.status_code == 200 and raw.headers["content-type"] == "application/octet-stream"
        assert raw.headers["X-Depth-Dtype"] == "<f2" and raw.headers["X-Depth-Shape"] == "60,80"
        shape = tuple(int(n) for n in raw.headers["X-Depth-Shape"].split(","))
        half = np.frombuffer(raw.content, dtype=raw.headers["X-Depth-Dtype"]).reshape(shape)
        # the float16 nearest to each float32 value (numpy's own cast), bit for bit
        assert np.array_equal(half.view(np.uint16), depth.astype(np.float16).view(np.uint16))

        ckpt_scale = 0.001 if variant == "metric-indoor" else None
        expected, scale = quantize_png16(depth, scale=ckpt_scale)
        png = _post(server.url, data, "image/png")
        assert png.status_code == 200 and png.headers["content-type"] == "image/png"
        assert float(png.headers["X-Depth-Scale"]) == scale
        values = _png_values(png.content)
        assert np.array_equal(values, expected)
        inside = expected < 65535  # half a step at most where nothing was clipped (plus float32 rounding)
        err = np.abs(values[inside] * scale - depth[inside].astype(np.float64))
        assert (err <= scale / 2 + 1e-6 * np.abs(depth[inside])).all()

        body = _post(server.url, data).json()  # no Accept: JSON, its PNG the same one
        assert body["scale"] == scale
        assert np.array_equal(_png_values(base64.b64decode(body["png16"])), expected)

        preview = _post(server.url, data, "image/jpeg")
        assert preview.headers["content-type"] == "image/jpeg" and preview.content[:2] == b"\xff\xd8"
        assert float(preview.headers["X-Depth-Scale"]) == scale


def test_accept_negotiation_and_406(tmp_path, model_dir, rgb_image):
    data = _jpeg(rgb_image(48, 64, 1))
    with serve(tmp_path, model_dir) as server:
        for accept, media_type in [
            ("*/*", "application/json"),
            ("image/*", "image/png"),
            ("text/html, application/xhtml+xml, */*;q=0.8", "application/json"),  # a browser
            ("application/x-npy;q=0.5, application/octet-stream", "application/octet-stream"),
            ("image/png;q=0, image/*", "image/jpeg"),
            ("application/x-npy, image/png", "application/x-npy"),
        ]:
            r = _post(server.url, data, accept)
            assert r.status_code == 200 and r.headers["content-type"].startswith(media_type), (accept, r.text)
        for accept in ("text/csv", "image/tiff, application/xml;q=0.9", "image/png;q=0", "*/*;q=0"):
            r = _post(server.url, data, accept)
            assert r.status_code == 406, (accept, r.text)
            body = r.json()
            assert body["error"] == "not_acceptable"
            for fmt in depth_formats.FORMATS:  # the supported list, in the message
                assert fmt.media_type in body["message"], body["message"]
        r = _post(server.url, data, "text/csv", format="npy")  # ?format= overrides Accept
        assert r.status_code == 200 and r.headers["content-type"] == "application/x-npy"
        r = _post(server.url, data, format="f32")
        assert r.status_code == 400 and "float16" in r.json()["message"]


@pytest.mark.parametrize("shape", [(480, 640), (1, 1), (1, 700), (700, 1), (37, 53)])
def test_png_writer_is_lossless_for_any_uint16_image(shape):
    rng = np.random.default_rng(sum(shape))
    values = rng.integers(0, 65536, shape, dtype=np.uint16)
    values.flat[0] = 65535
    values.flat[-1] = 0
    assert np.array_equal(_png_values(encoding.write_png16(values)), values)
    smooth = np.add.outer(np.arange(shape[0]), np.arange(shape[1])).astype(np.uint16) * 40
    assert np.array_equal(_png_values(encoding.write_png16(smooth)), smooth)


def test_png_writer_refuses_what_is_not_a_uint16_image():
    for bad in (np.zeros((4, 4), np.float32), np.zeros((4, 4, 1), np.uint16), np.zeros((0, 4), np.uint16)):
        with pytest.raises(ValueError, match="2-D uint16"):
            encoding.write_png16(bad)


def test_png_is_about_the_size_of_opencvs():
    """The faster writer must not buy its speed with a much larger file on a depth-like map."""
    yy, xx = np.mgrid[0:480, 0:640].astype(np.float32)
    depth = 2 + 3 * yy / 480 + 0.5 * np.sin(xx / 40) - (np.hypot(xx - 300, yy - 200) < 80)
    depth += np.random.default_rng(0).normal(0, 0.002, depth.shape).astype(np.float32)
    ours, scale = encoding.png16(depth, scale=0.001)
    values, _ = quantize_png16(depth, scale=0.001)
    ok, theirs = cv2.imencode(".png", values, [cv2.IMWRITE_PNG_COMPRESSION, 1, cv2.IMWRITE_PNG_STRATEGY,
                                               cv2.IMWRITE_PNG_STRATEGY_RLE])
    assert ok and scale == 0.001
    assert len(ours) <= 1.15 * len(theirs), (len(ours), len(theirs))


def test_float16_is_numpys_cast_bit_for_bit():
    """Across the encoder's slices, with normal, subnormal, zero and the largest values."""
    rng = np.random.default_rng(4)
    depth = rng.uniform(0, 80, (301, 207)).astype(np.float32)  # 62307 values: four slices
    depth[:5] = rng.uniform(0, 1e-5, (5, 207))  # float16 subnormals
    depth[-1, -3:] = [0.0, 65504.0, 6e-8]
    half = np.frombuffer(encoding.float16(depth), "<f2").reshape(depth.shape)
    assert np.array_equal(half.view(np.uint16), depth.astype(np.float16).view(np.uint16))


def test_float16_refuses_values_it_cannot_hold():
    with pytest.raises(encoding.NotRepresentable, match="application/x-npy"):
        encoding.float16(np.array([[1.0, 70000.0]], np.float32))
    with pytest.raises(encoding.NotRepresentable):
        encoding.float16(np.array([[np.nan]], np.float32))
    assert np.frombuffer(encoding.float16(np.array([[65504.0]], np.float32)), "<f2")[0] == 65504
