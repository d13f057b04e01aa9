"""POST /v1/depth and /v1/measure end to end: the front end, a DepthPool object and an
EndpointSlice on the local plane, and real depth servers (`python -m spatialforge.runner serve`,
tiny metric model) as processes. The slices are made here, so these tests do not depend on the
operator's pool reconcile; the pools ask for 0 replicas, so it starts nothing of its own."""

from __future__ import annotations

import asyncio
import contextlib
import io
import json
import os
import re
import secrets
import signal
import subprocess
import sys
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import boto3
import httpx
import numpy as np
import pytest
from click.testing import CliRunner
from PIL import Image

from spatialforge.devcluster.plane import Cluster
from spatialforge.devcluster.ports import free_port
from tests.apiserver.conftest import BUCKET, ServerThread, Tenant
from tests.timeouts import LONG, MEDIUM, SHORT


@dataclass
class DepthServer:
    url: str
    port: int
    proc: subprocess.Popen[bytes]
    log: Path

    def metric(self, name: str) -> float:
        for line in httpx.get(self.url + "/metrics", timeout=5).text.splitlines():
            if line.startswith(name + " "):
                return float(line.split()[1])
        raise AssertionError(f"{name} not in /metrics")


def _pod_address() -> str:
    """An address EndpointSlices accept (they refuse loopback) that reaches this host: one of
    198.18.0.0/15 (never routed) put on lo, as the local plane's node agent does for pods."""
    address = f"198.19.{secrets.randbelow(250) + 1}.{secrets.randbelow(250) + 1}"
    added = subprocess.run(["ip", "addr", "add", f"{address}/32", "dev", "lo"], capture_output=True, text=True)
    if added.returncode != 0 and "File exists" not in added.stderr:
        pytest.fail(f"cannot add {address}/32 to lo ({added.stderr.strip()}): these tests need iproute2 and "
                    "CAP_NET_ADMIN (root in a container or a dev VM), as the local plane's pod network does",
                    pytrace=False)
    return address


def _start_server(tmp: Path, model_dir: Path, host: str, *args: str) -> DepthServer:
    port = free_port(host)
    log = tmp / f"depth-server-{port}.log"
    env = {**os.environ, "SPATIALFORGE_MODEL_DIR": str(model_dir), "SPATIALFORGE_DEVICE": "cpu", "HF_HUB_OFFLINE": "1"}
    env.pop("SPATIALFORGE_RESEARCH_MODE", None)
    cmd = [sys.executable, "-m", "spatialforge.runner", "serve", "--host", host, "--port", str(port),
           "--variant", "metric-indoor", "--backend", "torch", *args]
    with log.open("wb") as out:
        proc = subprocess.Popen(cmd, env=env, stdout=out, stderr=subprocess.STDOUT)
    server = DepthServer(f"http://{host}:{port}", port, proc, log)
    deadline = time.monotonic() + LONG
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            pytest.fail(f"depth server exited ({proc.returncode}):\n{log.read_text()[-3000:]}", pytrace=False)
        with contextlib.suppress(httpx.TransportError):
            if httpx.get(server.url + "/readyz", timeout=5).status_code == 200:
                return server
        time.sleep(0.1)
    pytest.fail(f"depth server not ready after {LONG:.0f}s:\n{log.read_text()[-3000:]}", pytrace=False)


def _stop(server: DepthServer) -> None:
    if server.proc.poll() is None:
        server.proc.send_signal(signal.SIGTERM)
        try:
            server.proc.wait(timeout=MEDIUM)
        except subprocess.TimeoutExpired:
            server.proc.kill()
            server.proc.wait()


def _pool(cluster: Cluster, ns: str, name: str, endpoints: list[tuple[str, int, bool]], **spec: object) -> None:
    """A DepthPool (0 replicas: the operator starts nothing) and an EndpointSlice of its Service."""
    cluster.apply({"apiVersion": "spatialforge.io/v1alpha1", "kind": "DepthPool", "metadata": {"name": name, "namespace": ns},
                   "spec": {"model": {"size": "small", "variant": "metric-indoor"}, "gpusPerReplica": 0, "replicas": 0,
                            **spec}})
    for i, (address, port, ready) in enumerate(endpoints):
        cluster.apply({"apiVersion": "discovery.k8s.io/v1", "kind": "EndpointSlice",
                       "metadata": {"name": f"spatialforge-pool-{name}-t{i}", "namespace": ns,
                                    "labels": {"kubernetes.io/service-name": f"spatialforge-pool-{name}",
                                               "endpointslice.kubernetes.io/managed-by": "tests.spatialforge.io"}},
                       "addressType": "IPv4", "ports": [{"name": "http", "port": port, "protocol": "TCP"}],
                       "endpoints": [{"addresses": [address], "conditions": {"ready": ready}}]})


@dataclass
class Stack:
    ns: str
    fast: DepthServer
    slow: DepthServer
    apps: dict[str, ServerThread]


@pytest.fixture(scope="module")
def stack(cluster: Cluster, make_settings, api, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    from spatialforge.crds.v1alpha1.common import ModelSize, ModelVariant
    from spatialforge.runner.models.tiny import build_tiny_model_dir

    tmp = tmp_path_factory.mktemp("sync")
    models = build_tiny_model_dir(tmp / "models", sizes=(ModelSize.small,), variants=(ModelVariant.metric_indoor,))
    address = _pod_address()
    fast = _start_server(tmp, models, address, "--max-batch", "4", "--max-wait-ms", "2")
    # One request at a time, held 5 s waiting for a batch that never fills: the next one finds it full.
    slow = _start_server(tmp, models, address, "--max-batch", "8", "--max-wait-ms", "5000", "--max-queue", "1")
    ns = f"pools-{uuid.uuid4().hex[:6]}"
    cluster.apply({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": ns}})
    # A not-ready endpoint (nothing listens there): never chosen. A ready one whose server is gone
    # (the slice not updated yet): its refused connection is retried on the live one.
    _pool(cluster, ns, "fast", [(address, fast.port, True), ("198.18.0.1", free_port(), False),
                                (address, free_port(address), True)])
    _pool(cluster, ns, "slow", [(address, slow.port, True)], maxInFlightPerTenant=1)
    _pool(cluster, ns, "empty", [])
    apps = {name: ServerThread(make_settings(depth_pools=f"{ns}/{name}", pool_refresh_seconds=0.5)).start()
            for name in ("fast", "slow", "empty")}
    try:
        yield Stack(ns, fast, slow, apps)
    finally:
        for app in apps.values():
            app.stop()
        _stop(fast)
        _stop(slow)
        subprocess.run(["ip", "addr", "del", f"{address}/32", "dev", "lo"], capture_output=True)
        cluster.kubectl("delete", "namespace", ns, "--wait=false", check=False)


def _photo(width: int = 64, height: int = 48, seed: int = 0, focal_35mm: int | None = None) -> bytes:
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:height, 0:width]
    rgb = np.stack([xx * 255 // (width - 1), yy * 255 // (height - 1), (xx + yy) % 256], axis=-1)
    rgb = np.clip(rgb + rng.integers(0, 40, size=rgb.shape), 0, 255).astype(np.uint8)
    buf = io.BytesIO()
    exif = Image.Exif()
    if focal_35mm:
        exif.get_ifd(0x8769)[0xA405] = focal_35mm
    Image.fromarray(rgb).save(buf, format="JPEG", quality=92, exif=exif)
    return buf.getvalue()


def _client(stack: Stack, app: str, tenant: Tenant) -> httpx.Client:
    return httpx.Client(base_url=stack.apps[app].url, headers=tenant.headers, timeout=MEDIUM)


def _units(c: httpx.Client) -> int:
    r = c.get("/v1/usage")
    assert r.status_code == 200, r.text
    return int(r.json()["units_used"])


def test_depth_inline_png_with_metadata_headers_costs_one_unit(stack: Stack, make_tenant: Callable[..., Tenant]) -> None:
    tenant = make_tenant("free")
    with _client(stack, "fast", tenant) as c:
        before = _units(c)
        r = c.post("/v1/depth", files={"image": ("room.jpg", _photo())}, headers={"Accept": "image/png"})
        assert r.status_code == 200, r.text
        assert r.headers["content-type"] == "image/png"
        png = Image.open(io.BytesIO(r.content))
        assert png.mode.startswith("I") and png.size == (int(r.headers["X-Depth-Width"]), int(r.headers["X-Depth-Height"]))
        meta = json.loads(r.headers["X-Depth-Metadata"])
        assert meta["units"] == "metres" and meta["focalSource"] == "heuristic" and float(r.headers["X-Depth-Scale"]) > 0
        assert r.headers["X-Quota-Limit"] == "100" and "X-RateLimit-Limit" in r.headers
        assert _units(c) == before + 1


def test_a_refused_connection_is_retried_on_the_live_server(stack: Stack, make_tenant: Callable[..., Tenant]) -> None:
    """The "fast" pool lists a ready endpoint where nothing listens: requests take the two ready
    endpoints in turn, so some reach it first; each is refused, counted, and answered by the
    live server; every request succeeds and is charged once."""
    tenant = make_tenant("free")
    app = stack.apps["fast"]
    registry = app.app.state.metrics.registry
    labels = {"pool": f"{stack.ns}/fast"}
    refused = registry.get_sample_value("sf_api_pool_connect_refused_total", labels) or 0.0
    images = stack.fast.metric("spatialforge_serve_images_total")
    n = 4
    with _client(stack, "fast", tenant) as c:
        before = _units(c)
        for i in range(n):
            r = c.post("/v1/depth", files={"image": ("r.jpg", _photo(seed=10 + i))}, headers={"Accept": "image/png"})
            assert r.status_code == 200, r.text
        assert _units(c) == before + n
    tried = (registry.get_sample_value("sf_api_pool_connect_refused_total", labels) or 0.0) - refused
    assert 1 <= tried <= n, f"the dead endpoint was tried {tried} times in {n} requests"
    assert stack.fast.metric("spatialforge_serve_images_total") == images + n  # all answered by the live one


def test_depth_json_writes_png_and_preview_with_signed_urls(stack: Stack, make_tenant: Callable[..., Tenant]) -> None:
    tenant = make_tenant("free")
    with _client(stack, "fast", tenant) as c:
        r = c.post("/v1/depth", files={"image": ("a.jpg", _photo(seed=1))}, data={"fx": "60"})
        assert r.status_code == 200, r.text
        body = r.json()
        assert "small" in body["model"] and "metric" in body["model"], body
        assert body["units"] == "metres" and body["focal_source"] == "request" and body["width"] > 0
        assert body["results_prefix"].startswith(f"{tenant.prefix}results/sync/")
        png = httpx.get(body["depth_url"], timeout=SHORT)
        jpeg = httpx.get(body["preview_url"], timeout=SHORT)
        assert png.status_code == 200 and Image.open(io.BytesIO(png.content)).size == (body["width"], body["height"])
        assert jpeg.status_code == 200 and Image.open(io.BytesIO(jpeg.content)).format == "JPEG"
        assert _units(c) == 1


def test_upload_reference_own_prefix_only(stack: Stack, make_tenant: Callable[..., Tenant], minio) -> None:
    owner, other = make_tenant("free"), make_tenant("free")
    s3 = boto3.client("s3", endpoint_url=minio.env["SPATIALFORGE_S3_ENDPOINT"], region_name="us-east-1",
                      aws_access_key_id=minio.env["AWS_ACCESS_KEY_ID"],
                      aws_secret_access_key=minio.env["AWS_SECRET_ACCESS_KEY"])
    key = f"tenants/{owner.id}/inputs/0123456789abcdef/photo.jpg"
    s3.put_object(Bucket=BUCKET, Key=key, Body=_photo(seed=2))
    uri = f"s3://{BUCKET}/{key}"
    with _client(stack, "fast", owner) as c:
        r = c.post("/v1/depth", data={"uri": uri}, headers={"Accept": "image/png"})
        assert r.status_code == 200, r.text
        missing = c.post("/v1/depth", data={"uri": uri + ".nope"})
        assert missing.status_code == 404 and _units(c) == 1
    with _client(stack, "fast", other) as c:
        r = c.post("/v1/depth", data={"uri": uri})
        assert r.status_code == 403 and r.json()["error"]["code"] == "outside_tenant_prefix", r.text
        both = c.post("/v1/depth", data={"uri": uri}, files={"image": ("x.jpg", _photo())})
        assert both.status_code == 422
        assert _units(c) == 0


def test_bad_image_same_reason_as_a_depthbatch_and_not_charged(stack: Stack, make_tenant: Callable[..., Tenant]) -> None:
    from spatialforge.runner.errors import InvalidImageError
    from spatialforge.runner.images import decode_image

    data = b"this is not an image at all"
    with pytest.raises(InvalidImageError) as batch:
        decode_image("broken.jpg", data, max_pixels=10**8, max_bytes=10**8)
    tenant = make_tenant("free")
    with _client(stack, "fast", tenant) as c:
        r = c.post("/v1/depth", files={"image": ("broken.jpg", data)})
        assert r.status_code == 422, r.text
        unaddressed = re.compile(r" at 0x[0-9a-f]+")  # the reason names the decoder's buffer object
        error = r.json()["error"]
        assert error["code"] == "invalid_image"
        assert unaddressed.sub("", error["message"]) == unaddressed.sub("", batch.value.reason)
        assert _units(c) == 0


def test_licence_and_plan_refusals(stack: Stack, make_tenant: Callable[..., Tenant]) -> None:
    with _client(stack, "fast", make_tenant("pro")) as c:
        r = c.post("/v1/depth", files={"image": ("a.jpg", _photo())}, data={"model": "base"})
        assert r.status_code == 403 and r.json()["error"]["code"] == "licence_non_commercial", r.text
        assert _units(c) == 0
    with _client(stack, "fast", make_tenant("free")) as c:
        r = c.post("/v1/depth", files={"image": ("a.jpg", _photo())}, data={"model": "large"})
        assert r.status_code == 403 and r.json()["error"]["code"] == "plan_forbids", r.text


def test_quota_spent_is_429(stack: Stack, make_tenant: Callable[..., Tenant], admin) -> None:
    tenant = make_tenant("free")
    r = admin.put(f"/v1/admin/tenants/{tenant.id}/plan", json={"plan": "free", "monthly_units": 1})
    assert r.status_code == 200, r.text
    with _client(stack, "fast", tenant) as c:
        assert c.post("/v1/depth", files={"image": ("a.jpg", _photo())}).status_code == 200
        r = c.post("/v1/depth", files={"image": ("a.jpg", _photo())})
        assert r.status_code == 429 and r.json()["error"]["code"] == "quota_exceeded", r.text
        assert _units(c) == 1


def test_saturated_pool_is_503_with_retry_after_and_charges_nothing(stack: Stack,
                                                                    make_tenant: Callable[..., Tenant]) -> None:
    first, second = make_tenant("free"), make_tenant("free")

    async def scenario() -> tuple[httpx.Response, httpx.Response, httpx.Response]:
        url = stack.apps["slow"].url
        async with httpx.AsyncClient(base_url=url, timeout=MEDIUM) as c:
            held = asyncio.create_task(c.post("/v1/depth", files={"image": ("a.jpg", _photo())},
                                              headers={**first.headers, "Accept": "image/png"}))
            deadline = time.monotonic() + SHORT
            while stack.slow.metric("spatialforge_serve_queue_depth") < 1:  # the server holds it
                assert time.monotonic() < deadline, "the first request never reached the depth server"
                await asyncio.sleep(0.05)
            own_limit = await c.post("/v1/depth", files={"image": ("b.jpg", _photo())}, headers=first.headers)
            full = await c.post("/v1/depth", files={"image": ("c.jpg", _photo())}, headers=second.headers)
            return await held, own_limit, full

    held, own_limit, full = asyncio.run(scenario())
    assert held.status_code == 200, held.text
    assert own_limit.status_code == 503 and own_limit.json()["error"]["code"] == "pool_tenant_limit"
    assert full.status_code == 503 and full.json()["error"]["code"] == "pool_saturated", full.text
    assert int(full.headers["Retry-After"]) >= 1 and int(own_limit.headers["Retry-After"]) >= 1
    with _client(stack, "slow", first) as c:
        assert _units(c) == 1
    with _client(stack, "slow", second) as c:
        assert _units(c) == 0


def test_no_ready_server_is_503_and_charges_nothing(stack: Stack, make_tenant: Callable[..., Tenant]) -> None:
    with _client(stack, "empty", make_tenant("free")) as c:
        r = c.post("/v1/depth", files={"image": ("a.jpg", _photo())})
        assert r.status_code == 503 and r.json()["error"]["code"] == "pool_unavailable", r.text
        assert r.headers["Retry-After"] == "1"
        assert _units(c) == 0


def test_measure_end_to_end_with_focal_sources(stack: Stack, make_tenant: Callable[..., Tenant]) -> None:
    tenant = make_tenant("free")
    with _client(stack, "fast", tenant) as c:
        points = {"from": "10,20", "to": "50,30"}
        given = c.post("/v1/measure", files={"image": ("a.jpg", _photo())}, data={**points, "fx": "55"})
        exif = c.post("/v1/measure", files={"image": ("b.jpg", _photo(focal_35mm=26))}, data=points)
        none = c.post("/v1/measure", files={"image": ("c.jpg", _photo())}, data=points)
        for r in (given, exif, none):
            assert r.status_code == 200, r.text
            body = r.json()
            lo, hi = body["interval_m"]
            assert body["distance_m"] > 0 and lo <= body["distance_m"] <= hi and hi > lo
        assert [r.json()["focal_source"] for r in (given, exif, none)] == ["spec", "exif-35mm", "fallback"]
        # the uncertainty follows the focal source: the fallback's interval is the widest
        width = [r.json()["interval_m"][1] - r.json()["interval_m"][0] for r in (given, none)]
        assert width[0] < width[1]
        outside = c.post("/v1/measure", files={"image": ("a.jpg", _photo())}, data={"from": "10,20", "to": "500,30"})
        assert outside.status_code == 422 and outside.json()["error"]["code"] == "invalid_measurement", outside.text
        bad = c.post("/v1/measure", files={"image": ("a.jpg", _photo())}, data={"from": "10", "to": "5,3"})
        assert bad.status_code == 422 and "from" in bad.json()["error"]["message"]
        assert _units(c) == 3


def test_cli_depth_and_measure(stack: Stack, make_tenant: Callable[..., Tenant], tmp_path: Path) -> None:
    from spatialforge.cli import main

    tenant = make_tenant("free")
    photo = tmp_path / "room.jpg"
    photo.write_bytes(_photo(seed=3))
    env = {"SPATIALFORGE_URL": stack.apps["fast"].url, "SPATIALFORGE_API_KEY": tenant.key}
    runner = CliRunner()
    out, preview = tmp_path / "depth.png", tmp_path / "preview.jpg"
    result = runner.invoke(main, ["depth", str(photo), "-o", str(out), "--preview", str(preview)], env=env)
    assert result.exit_code == 0, result.output
    assert Image.open(out).mode.startswith("I") and Image.open(preview).format == "JPEG"
    inline = tmp_path / "inline.png"
    result = runner.invoke(main, ["depth", str(photo), "-o", str(inline)], env=env)
    assert result.exit_code == 0, result.output
    assert json.loads(result.stdout)["units"] == "metres" and Image.open(inline).size == Image.open(out).size
    result = runner.invoke(main, ["measure", str(photo), "--from", "5,5", "--to", "40,30", "--fx", "50"], env=env)
    assert result.exit_code == 0, result.output
    body = json.loads(result.stdout)
    assert body["distance_m"] > 0 and body["focal_source"] == "spec"
    refused = runner.invoke(main, ["measure", str(photo), "--from", "5,5", "--to", "400,30"], env=env)
    assert refused.exit_code != 0 and "invalid_measurement" in refused.output
