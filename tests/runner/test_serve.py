"""The depth server (`python -m spatialforge.runner serve`) as a real process on the tiny model."""

from __future__ import annotations

import asyncio
import contextlib
import io
import os
import re
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx
import numpy as np
import pytest
from PIL import Image

from spatialforge.devcluster.ports import free_port
from spatialforge.runner import run_local
from tests import timeouts


@dataclass
class Server:
    url: str
    proc: subprocess.Popen[bytes]
    log: Path

    def text(self) -> str:
        return self.log.read_text(errors="replace")


def _wait(predicate, timeout: float, what: str, server: Server | None = None) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return
        if server is not None and server.proc.poll() is not None:
            pytest.fail(f"server exited ({server.proc.returncode}) while waiting for {what}:\n{server.text()[-3000:]}")
        time.sleep(0.05)
    pytest.fail(f"timed out after {timeout} s waiting for {what}" + (f":\n{server.text()[-3000:]}" if server else ""))


def _get(url: str) -> httpx.Response | None:
    try:
        return httpx.get(url, timeout=5)
    except httpx.TransportError:
        return None


@contextlib.contextmanager
def serve(tmp_path: Path, model_dir: Path, *args: str, wait_ready: bool = True, env: dict[str, str] | None = None) -> Iterator[Server]:
    port = free_port()
    log = tmp_path / f"server-{port}.log"
    full_env = {**os.environ, "SPATIALFORGE_MODEL_DIR": str(model_dir), "SPATIALFORGE_DEVICE": "cpu", **(env or {})}
    cmd = [sys.executable, "-m", "spatialforge.runner", "serve", "--host", "127.0.0.1", "--port", str(port), *args]
    with log.open("wb") as out:
        proc = subprocess.Popen(cmd, env=full_env, stdout=out, stderr=subprocess.STDOUT)
    server = Server(url=f"http://127.0.0.1:{port}", proc=proc, log=log)
    try:
        if wait_ready:
            _wait(lambda: (r := _get(server.url + "/readyz")) is not None and r.status_code == 200,
                  timeouts.LONG, "readiness", server)
        yield server
    finally:
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(timeout=timeouts.MEDIUM)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()


def _jpeg(rgb: np.ndarray) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(rgb).save(buf, format="JPEG", quality=92)
    return buf.getvalue()


def _metric(server: Server, name: str) -> float:
    text = httpx.get(server.url + "/metrics", timeout=5).text
    match = re.search(rf"^{re.escape(name)} ([0-9.e+-]+)$", text, re.M)
    assert match, f"{name} not in /metrics"
    return float(match.group(1))


async def _post_all(url: str, bodies: list[bytes], **params: str) -> list[httpx.Response]:
    async with httpx.AsyncClient(timeout=timeouts.MEDIUM, limits=httpx.Limits(max_connections=len(bodies))) as client:
        return await asyncio.gather(*(client.post(url + "/v1/depth", content=b, params=params) for b in bodies))


def test_ready_only_after_load_and_warm_up(tmp_path, model_dir):
    """A cold backend cache makes loading take seconds (ONNX export): alive but not ready meanwhile."""
    env = {"SPATIALFORGE_DEPTH_BACKEND": "onnxruntime", "SPATIALFORGE_BACKEND_CACHE": str(tmp_path / "cold-cache")}
    with serve(tmp_path, model_dir, wait_ready=False, env=env) as server:
        _wait(lambda: _get(server.url + "/healthz") is not None, timeouts.MEDIUM, "liveness", server)
        ready = _get(server.url + "/readyz")
        early = httpx.post(server.url + "/v1/depth", content=b"x", timeout=5)
        assert ready is not None and ready.status_code == 503 and ready.json()["error"] == "not_ready"
        assert early.status_code == 503 and early.headers["Retry-After"] == "1"
        _wait(lambda: (r := _get(server.url + "/readyz")) is not None and r.status_code == 200, timeouts.LONG, "ready", server)
        assert _get(server.url + "/readyz").json()["backend"] == "onnxruntime"
        log = server.text()
        assert log.index("warm-up batch of 8 ran") < log.index("depth server ready")
        assert _metric(server, "spatialforge_serve_ready") == 1


def test_a_model_that_cannot_load_ends_the_server(tmp_path):
    with serve(tmp_path, tmp_path / "no-models", wait_ready=False) as server:
        assert server.proc.wait(timeout=timeouts.LONG) == 1
        assert "ModelLoadError" in server.text()


def test_concurrent_requests_are_batched(tmp_path, model_dir, rgb_image):
    with serve(tmp_path, model_dir, "--max-batch", "4", "--max-wait-ms", "300") as server:
        bodies = [_jpeg(rgb_image(48, 64, i)) for i in range(8)]
        responses = asyncio.run(_post_all(server.url, bodies, format="json", preview="0"))
        assert [r.status_code for r in responses] == [200] * 8
        count = _metric(server, "spatialforge_serve_batch_size_count")
        total = _metric(server, "spatialforge_serve_batch_size_sum")
        assert total == 8 and count < 8, f"{count} batches for 8 requests: nothing was batched"
        assert _metric(server, 'spatialforge_serve_images_total') == 8
        assert _metric(server, "spatialforge_serve_queue_depth") == 0
        assert _metric(server, "spatialforge_serve_images_per_second") > 0


def test_a_full_queue_answers_503_with_retry_after(tmp_path, model_dir, rgb_image):
    with serve(tmp_path, model_dir, "--max-batch", "1", "--max-wait-ms", "0", "--max-queue", "2") as server:
        bodies = [_jpeg(rgb_image(240, 320, i)) for i in range(24)]
        responses = asyncio.run(_post_all(server.url, bodies, format="png"))
        codes = [r.status_code for r in responses]
        assert set(codes) == {200, 503}, codes
        for r in responses:
            if r.status_code == 503:
                assert r.json()["error"] == "queue_full"
                assert int(r.headers["Retry-After"]) >= 1
        assert _metric(server, 'spatialforge_serve_rejected_total{reason="queue_full"}') == codes.count(503)
        # and it recovers: the next request is served
        assert httpx.post(server.url + "/v1/depth", content=bodies[0], timeout=timeouts.MEDIUM).status_code == 200


def test_sigterm_drains_in_flight_requests(tmp_path, model_dir, rgb_image):
    """Requests waiting for their batch (a long max wait) are answered after SIGTERM; then it exits 0."""
    with serve(tmp_path, model_dir, "--max-batch", "8", "--max-wait-ms", "3000") as server:

        async def scenario() -> list[httpx.Response]:
            posts = asyncio.ensure_future(_post_all(server.url, [_jpeg(rgb_image(48, 64, i)) for i in range(3)], format="png"))
            deadline = time.monotonic() + timeouts.SHORT
            while _metric(server, "spatialforge_serve_queue_depth") < 3:
                assert time.monotonic() < deadline, "requests never reached the queue"
                await asyncio.sleep(0.05)
            server.proc.send_signal(signal.SIGTERM)
            return await posts

        responses = asyncio.run(scenario())
        assert [r.status_code for r in responses] == [200] * 3
        assert all(r.headers["content-type"] == "image/png" for r in responses)
        assert server.proc.wait(timeout=timeouts.MEDIUM) == 0
        assert _get(server.url + "/healthz") is None  # no longer listening


def _strip_addresses(text: str) -> str:
    return re.sub(r"0x[0-9a-f]+", "0x?", text)


def test_bad_images_get_the_batch_runners_reason(tmp_path, model_dir, make_manifest, rgb_image):
    good = _jpeg(rgb_image(48, 64, 0))
    cases = {"garbage.jpg": b"not an image at all", "truncated.jpg": good[: len(good) // 3], "empty.png": b""}
    for name, data in cases.items():
        (tmp_path / "in" / name).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / "in" / name).write_bytes(data)
    with serve(tmp_path, model_dir) as server:
        for name, data in cases.items():
            resp = httpx.post(server.url + "/v1/depth", content=data, params={"name": name}, timeout=timeouts.SHORT)
            assert resp.status_code == 422, (name, resp.text)
            assert resp.json()["error"] == "invalid_image"
            got = resp.json()["message"]
            one = tmp_path / "one"
            shutil_copy(tmp_path / "in" / name, one / name)
            manifest = make_manifest("DepthBatch", {"inputs": [f"file://one/{name}"], "output": {"uri": "file://out"}},
                                     filename=f"{name}.yaml")
            outcome = run_local(manifest, show_progress=False)
            assert outcome.exit_code == 42
            batch_reason = outcome.reason.replace((one / name).resolve().as_uri(), name)
            assert _strip_addresses(got) == _strip_addresses(batch_reason), (got, outcome.reason)
    with serve(tmp_path, model_dir, env={"SPATIALFORGE_SERVE_MAX_IMAGE_BYTES": "1000"}) as server:
        resp = httpx.post(server.url + "/v1/depth", content=good, params={"name": "a.jpg"}, timeout=timeouts.SHORT)
        assert resp.status_code == 413
        assert resp.json()["message"] == f"InvalidImageError: a.jpg: {len(good)} bytes is more than maxImageBytes 1000"


def shutil_copy(src: Path, dest: Path) -> None:
    dest.parent.mkdir(parents=True, exist_ok=True)
    dest.write_bytes(src.read_bytes())


def test_depth_equals_the_batch_runners_and_formats(tmp_path, model_dir, make_manifest, rgb_image):
    import base64

    import cv2

    data = _jpeg(rgb_image(60, 80, 5))
    (tmp_path / "in").mkdir()
    (tmp_path / "in" / "photo.jpg").write_bytes(data)
    outcome = run_local(make_manifest("DepthBatch", {"inputs": ["file://in/"], "output": {"uri": "file://out"}}),
                        show_progress=False)
    assert outcome.exit_code == 0, outcome.reason
    batch_png = cv2.imread(str(next((tmp_path / "out").rglob("photo.depth.png"))), cv2.IMREAD_UNCHANGED)
    with serve(tmp_path, model_dir) as server:
        png = httpx.post(server.url + "/v1/depth", content=data, headers={"Accept": "image/png"},
                         params={"fx": "100"}, timeout=timeouts.SHORT)
        assert png.status_code == 200 and png.headers["content-type"] == "image/png"
        served = cv2.imdecode(np.frombuffer(png.content, np.uint8), cv2.IMREAD_UNCHANGED)
        assert served.dtype == np.uint16 and served.shape == (60, 80)
        assert np.abs(served.astype(int) - batch_png.astype(int)).max() <= 1  # same model, same code path
        assert png.headers["X-Depth-Units"] == "relative-disparity"
        assert png.headers["X-Focal-Source"] == "request" and float(png.headers["X-Focal-Length-Px"]) == 100
        assert float(png.headers["X-Depth-Scale"]) > 0
        body = httpx.post(server.url + "/v1/depth", content=data, timeout=timeouts.SHORT).json()
        assert body["model"] == "depth-anything-v2-small-relative" and (body["width"], body["height"]) == (80, 60)
        assert body["focalSource"] == "heuristic" and body["focalLengthPx"] == pytest.approx(0.9 * 80)
        preview = cv2.imdecode(np.frombuffer(base64.b64decode(body["preview"]), np.uint8), cv2.IMREAD_COLOR)
        assert preview.shape == (60, 80, 3)
        jpeg = httpx.post(server.url + "/v1/depth", content=data, params={"format": "preview"}, timeout=timeouts.SHORT)
        assert jpeg.headers["content-type"] == "image/jpeg" and jpeg.content[:2] == b"\xff\xd8"
        bad = httpx.post(server.url + "/v1/depth", content=data, params={"format": "tiff"}, timeout=timeouts.SHORT)
        assert bad.status_code == 400 and "format" in bad.json()["message"]


def test_preview_shows_near_bright_for_both_kinds_of_model():
    import cv2

    from spatialforge.runner.preview import colorize

    near_to_far = np.tile(np.linspace(1.0, 10.0, 64, dtype=np.float32), (16, 1))  # metres, left is near
    brightness = cv2.cvtColor(colorize(near_to_far, metric=True), cv2.COLOR_BGR2GRAY).astype(int)
    assert brightness[:, 0].mean() > brightness[:, -1].mean() + 100
    disparity = 1.0 / near_to_far  # relative models: large = near
    brightness = cv2.cvtColor(colorize(disparity, metric=False), cv2.COLOR_BGR2GRAY).astype(int)
    assert brightness[:, 0].mean() > brightness[:, -1].mean() + 100
    flat = colorize(np.full((8, 8), np.nan, np.float32), metric=True)  # nothing finite: no crash, one colour
    assert flat.shape == (8, 8, 3) and len(np.unique(flat.reshape(-1, 3), axis=0)) == 1
