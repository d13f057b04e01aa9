"""`POST /v1/depth` answers by Accept through the front end (spatialforge/depth_formats.py):
the real stack of tests/apiserver/test_sync.py (plane, Redis, MinIO, stripe-mock, a DepthPool
and its EndpointSlice) with one real depth server of the tiny metric model. Every format is
checked value for value against the float32 NPY answer of the same image; a 406 charges nothing.
"""

from __future__ import annotations

import io
import json
import subprocess
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass

import httpx
import numpy as np
import pytest
from PIL import Image

from spatialforge import depth_formats
from spatialforge.client import Client
from spatialforge.devcluster.plane import Cluster
from spatialforge.runner.stages.depth import quantize_png16
from tests.apiserver.conftest import ServerThread, Tenant
from tests.apiserver.test_sync import DepthServer, _photo, _pod_address, _pool, _start_server, _stop, _units
from tests.timeouts import MEDIUM, SHORT

METRIC_SCALE = 0.001  # the metric-indoor PNG's metres per step (registry.PNG16_METRIC_SCALE)


@dataclass
class Pool:
    app: ServerThread
    server: DepthServer


@pytest.fixture(scope="module")
def pool(cluster: Cluster, make_settings, api, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Pool]:
    from spatialforge.crds.v1alpha1.common import ModelSize, ModelVariant
    from spatialforge.runner.models.tiny import build_tiny_model_dir

    tmp = tmp_path_factory.mktemp("sync-formats")
    models = build_tiny_model_dir(tmp / "models", sizes=(ModelSize.small,), variants=(ModelVariant.metric_indoor,))
    address = _pod_address()
    server = _start_server(tmp, models, address, "--max-batch", "2", "--max-wait-ms", "2")
    ns = f"formats-{uuid.uuid4().hex[:6]}"
    cluster.apply({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": ns}})
    _pool(cluster, ns, "formats", [(address, server.port, True)])
    app = ServerThread(make_settings(depth_pools=f"{ns}/formats", pool_refresh_seconds=0.5)).start()
    try:
        yield Pool(app, server)
    finally:
        app.stop()
        _stop(server)
        subprocess.run(["ip", "addr", "del", f"{address}/32", "dev", "lo"], capture_output=True)
        cluster.kubectl("delete", "namespace", ns, "--wait=false", check=False)


def _png_values(data: bytes) -> np.ndarray:
    values = np.asarray(Image.open(io.BytesIO(data)))
    assert values.ndim == 2 and values.dtype.kind in "iu"
    return values.astype(np.uint16)


def test_every_accept_value_is_the_npy_map_losslessly(pool: Pool, make_tenant: Callable[..., Tenant]) -> None:
    tenant = make_tenant("free")
    photo = _photo(80, 60, seed=7)
    with httpx.Client(base_url=pool.app.url, headers=tenant.headers, timeout=MEDIUM) as c:
        before = _units(c)

        def post(accept: str | None = None, **params: str) -> httpx.Response:
            r = c.post("/v1/depth", files={"image": ("room.jpg", photo)}, params=params,
                       headers={"Accept": accept} if accept else {})
            assert r.status_code == 200, (accept, r.text)
            return r

        npy = post("application/x-npy")
        assert npy.headers["content-type"] == "application/x-npy"
        depth = np.load(io.BytesIO(npy.content), allow_pickle=False)
        assert depth.dtype == np.float32 and depth.shape == (60, 80) and np.isfinite(depth).all()
        assert npy.headers["X-Depth-Shape"] == "60,80" and npy.headers["X-Depth-Dtype"] == "<f4"
        assert npy.headers["X-Depth-Units"] == "metres" and float(npy.headers["X-Depth-Scale"]) == 1.0
        assert json.loads(npy.headers["X-Depth-Metadata"])["focalSource"] == "heuristic"
        assert "X-Quota-Limit" in npy.headers

        raw = post("application/octet-stream")
        assert raw.headers["content-type"] == "application/octet-stream"
        shape = tuple(int(n) for n in raw.headers["X-Depth-Shape"].split(","))
        half = np.frombuffer(raw.content, dtype=raw.headers["X-Depth-Dtype"]).reshape(shape)
        assert raw.headers["X-Depth-Dtype"] == "<f2"
        assert np.array_equal(half.view(np.uint16), depth.astype(np.float16).view(np.uint16))

        expected, scale = quantize_png16(depth, scale=METRIC_SCALE)
        png = post("image/png")
        assert png.headers["content-type"] == "image/png" and float(png.headers["X-Depth-Scale"]) == scale
        assert np.array_equal(_png_values(png.content), expected)

        body = post().json()  # no Accept: JSON and the stored PNG, the same values
        assert body["scale"] == scale
        stored = httpx.get(body["depth_url"], timeout=SHORT)
        assert stored.status_code == 200 and np.array_equal(_png_values(stored.content), expected)

        preview = post("image/jpeg")
        assert preview.headers["content-type"] == "image/jpeg" and preview.content[:2] == b"\xff\xd8"

        by_query = post("text/csv", format="float16")  # ?format= wins over Accept
        assert by_query.content == raw.content
        assert _units(c) == before + 6

    with Client(pool.app.url, tenant.key, timeout=MEDIUM) as client:  # the Python client's numpy answer
        as_f32, meta = client.depth_map(photo)
        as_f16, _ = client.depth_map(photo, dtype="float16")
        png_bytes, _ = client.depth_png(photo)
    assert as_f32.dtype == np.float32 and np.array_equal(as_f32, depth) and meta["units"] == "metres"
    assert as_f16.dtype == np.float16 and np.array_equal(as_f16.view(np.uint16), half.view(np.uint16))
    assert np.array_equal(_png_values(png_bytes), expected)


def test_an_unacceptable_accept_is_406_with_the_list_and_charges_nothing(
        pool: Pool, make_tenant: Callable[..., Tenant]) -> None:
    tenant = make_tenant("free")
    images = pool.server.metric("spatialforge_serve_images_total")
    with httpx.Client(base_url=pool.app.url, headers=tenant.headers, timeout=MEDIUM) as c:
        before = _units(c)
        for accept in ("text/csv", "image/tiff, image/webp;q=0.5", "application/x-npy;q=0"):
            r = c.post("/v1/depth", files={"image": ("room.jpg", _photo())}, headers={"Accept": accept})
            assert r.status_code == 406, (accept, r.text)
            error = r.json()["error"]
            assert error["code"] == "not_acceptable"
            assert error["supported"] == [f.media_type for f in depth_formats.FORMATS]
            assert all(f.media_type in error["message"] for f in depth_formats.FORMATS)
        bad = c.post("/v1/depth", files={"image": ("room.jpg", _photo())}, params={"format": "f32"})
        assert bad.status_code == 422 and "format" in bad.text
        assert _units(c) == before
    assert pool.server.metric("spatialforge_serve_images_total") == images  # the pool never saw them
    with Client(pool.app.url, tenant.key, timeout=MEDIUM) as client, pytest.raises(ValueError, match="float16"):
        client.depth_map(_photo(), dtype="float64")


def test_openapi_lists_every_answer(pool: Pool) -> None:
    doc = httpx.get(pool.app.url + "/openapi.json", timeout=SHORT)
    if doc.status_code == 404:  # PUBLIC_DOCS off outside dev mode: read the app's own schema
        schema = pool.app.app.openapi()
    else:
        schema = doc.json()
    op = schema["paths"]["/v1/depth"]["post"]
    assert set(op["responses"]["200"]["content"]) >= {f.media_type for f in depth_formats.FORMATS if f.inline}
    assert "406" in op["responses"]
    fmt = next(p for p in op["parameters"] if p["name"] == "format")
    assert set(json.dumps(fmt["schema"]).split('"')) >= set(depth_formats.NAMES)
