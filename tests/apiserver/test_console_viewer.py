"""The console's 3D viewer and floor plan in a real browser (headless Chromium, WebGL on
SwiftShader) on the real stack: a ReconstructionJob submitted through the API and run to
Succeeded by the session operator; its outputs are the runner's own, written by the real
ReconstructStage (fusion, mesh, floor plan; depth rendered from the synthetic room along a
short eye-height walk) into the job's result prefix in MinIO, so the API lists and signs them
as it does for a runner pod.

The page is checked against the files themselves: the canvas is read back (preserveDrawingBuffer)
and must show the mesh (many colours, most pixels off the background), the floor plan image
decodes, and the areas shown are the manifest's. The open time (click to first frame) comes
from the page's own performance measure and is printed.
"""

from __future__ import annotations

import base64
import io
import os
from collections.abc import Callable, Iterator
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import httpx
import numpy as np
import pytest
from spatialforge.crds.layout import shard_prefix

from tests.apiserver import test_console
from tests.apiserver.conftest import BUCKET, ServerThread, Tenant, wait_until
from tests.apiserver.test_console import CHROMEDRIVER, CHROMIUM, _axe, _sign_in, _text
from tests.timeouts import LONG, MEDIUM, SHORT

WALK = 24  # keyframes of the walk: about 10 s of fusion here, a 245k-triangle mesh (200k in mesh.web.ply)
BACKGROUND = (242, 242, 242)  # the viewer's scene background, #f2f2f2
shots = test_console.shots  # the same screenshot fixture ($SF_SCREENSHOTS)


@pytest.fixture(scope="module")
def gl_browser() -> Iterator[Any]:
    """Headless Chromium with WebGL on SwiftShader (ANGLE's CPU Vulkan): no GPU is needed."""
    missing = [str(p) for p in (CHROMIUM, CHROMEDRIVER) if not p.is_file()]
    if missing:
        pytest.fail(f"{', '.join(missing)} missing: run `make install` (hack/install.sh)", pytrace=False)
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    os.environ["SE_OFFLINE"] = "true"
    options = webdriver.ChromeOptions()
    options.binary_location = str(CHROMIUM)
    for arg in ("--headless=new", "--no-sandbox", "--disable-dev-shm-usage", "--use-angle=swiftshader",
                "--enable-unsafe-swiftshader", "--window-size=1280,1000", "--disable-extensions", "--no-first-run"):
        options.add_argument(arg)
    driver = webdriver.Chrome(options=options, service=Service(executable_path=str(CHROMEDRIVER)))
    driver.set_script_timeout(MEDIUM)
    try:
        yield driver
    finally:
        driver.quit()


def _reconstruct_into(output_uri: str, namespace: str, name: str, minio_env: dict[str, str],
                      tmp: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Run the runner's ReconstructStage for job `name`, writing to its result prefix in MinIO."""
    from spatialforge.runner.app import parse_resource
    from spatialforge.runner.settings import RunnerSettings
    from spatialforge.runner.stages.base import RunContext
    from spatialforge.runner.stages.reconstruct import ReconstructStage
    from spatialforge.runner.synthetic import (
        PinholeCamera,
        furnished_room,
        render,
        walk,
        write_video,
    )

    for k, v in minio_env.items():
        monkeypatch.setenv(k, v)
    room, camera = furnished_room(), PinholeCamera(width=320, height=240, fx=250, fy=250)
    truth = walk(WALK)
    video = write_video(tmp / "walk.mp4", [render(room, camera, T, supersample=1)[0] for T in truth], fps=10)

    def depth(keyframes: list) -> tuple[list[np.ndarray], bool]:
        return [render(room, camera.scaled(*k.rgb.shape[1::-1]), truth[k.index], supersample=1)[1] for k in keyframes], True

    spec = parse_resource({
        "apiVersion": "spatialforge.io/v1alpha1", "kind": "ReconstructionJob", "metadata": {"name": name, "namespace": namespace},
        "spec": {"input": video.as_uri(), "quality": "draft", "depthMax": 8.0, "voxelSize": 0.03,
                 "intrinsics": {"fx": 250.0, "fy": 250.0},
                 "output": {"uri": output_uri, "formats": ["mesh", "pointcloud", "trajectory", "floorplan"]}},
    }, allow_local=True).spec
    ctx = RunContext(namespace=namespace, name=name, settings=RunnerSettings.from_env())
    ReconstructStage(depth_provider=depth).run(spec, ctx)


def _canvas_pixels(driver: Any) -> np.ndarray:
    data = driver.execute_script("return document.getElementById('viewer-canvas').toDataURL('image/png')")
    from PIL import Image

    return np.asarray(Image.open(io.BytesIO(base64.b64decode(data.split(",", 1)[1]))).convert("RGB"))


def _drawn(pixels: np.ndarray) -> tuple[int, float]:
    """Distinct colours, and the share of pixels off the background."""
    flat = pixels.reshape(-1, 3)
    off = np.abs(flat.astype(int) - BACKGROUND).sum(axis=1) > 12
    return len(np.unique(flat, axis=0)), float(off.mean())


def test_reconstruction_3d_view_and_floor_plan(api: ServerThread, make_tenant: Callable[..., Tenant], minio,
                                              gl_browser: Any, shots: Callable[[Any, str], None], tmp_path: Path,
                                              monkeypatch: pytest.MonkeyPatch) -> None:
    from selenium.webdriver.common.action_chains import ActionChains

    driver = gl_browser
    tenant = make_tenant("pro", seconds=1)
    client = tenant.client()
    r = client.post("/v1/reconstructions", json=tenant.recon_spec())
    assert r.status_code == 202, r.text
    job = r.json()["id"]
    phases: list[str] = []

    def succeeded() -> bool:
        phases.append(client.get(f"/v1/jobs/{job}").json()["phase"])
        return phases[-1] == "Succeeded"

    try:
        wait_until("the job to succeed", succeeded, LONG)  # a busy shared machine can hold the plane back
    except AssertionError as exc:
        raise AssertionError(f"{exc}; phases seen: {sorted(set(phases))}") from None
    output = f"{tenant.prefix}results"
    _reconstruct_into(output, tenant.namespace, job, minio.env, tmp_path, monkeypatch)

    results = client.get(f"/v1/jobs/{job}/results").json()
    keys = {f["key"] for f in results["files"]}
    assert {"shard-00000/manifest.json", "shard-00000/mesh.ply", "shard-00000/trajectory.json",
            "shard-00000/floorplan.svg"} <= keys, keys
    signed = {f["key"]: f["url"] for f in results["files"]}
    manifest = httpx.get(signed["shard-00000/manifest.json"], timeout=SHORT).json()
    shown_kind = "webMesh" if "webMesh" in manifest["outputs"] else "mesh"
    assert manifest["outputs"][shown_kind]["uri"].startswith(shard_prefix(output, tenant.namespace, job, 0))
    assert output.startswith(f"s3://{BUCKET}/")

    # The CSP names the object store's origin (MinIO is another port, so another origin), not *.
    csp = httpx.get(api.url + "/console/", timeout=SHORT).headers["content-security-policy"]
    store = minio.env["SPATIALFORGE_S3_ENDPOINT"].rstrip("/")
    assert f"connect-src 'self' {store};" in csp and f"img-src 'self' blob: data: {store};" in csp, csp

    _sign_in(driver, SimpleNamespace(url=api.url + "/console/"), tenant.key)
    wait_until("the jobs view", lambda: driver.find_elements("css selector", f"tr[data-job-id='{job}']"), SHORT)
    driver.get(f"{api.url}/console/#/jobs/{job}")
    button = wait_until("the 3D button", lambda: driver.find_elements("css selector", "#viewer-open"), MEDIUM)[0]
    assert not driver.find_element("css selector", "#viewer-canvas").is_displayed()  # nothing loaded before the click
    links = driver.find_elements("css selector", "#files a")
    assert {a.text for a in links} == keys  # every file still downloadable by its signed link
    shots(driver, "11-reconstruction-job")

    button.click()
    canvas = wait_until("the first frame", lambda: driver.find_element("css selector", "#viewer-canvas").get_attribute("data-ready")
                        and driver.find_element("css selector", "#viewer-canvas"), MEDIUM)
    assert _text(driver, "#error") == ""
    mesh_bytes = httpx.get(signed[f"shard-00000/{manifest['outputs'][shown_kind]['uri'].rsplit('/', 1)[1]}"], timeout=MEDIUM).content
    header = mesh_bytes[: mesh_bytes.index(b"end_header")].decode()
    vertices = int(header.split("element vertex ")[1].split()[0])
    faces = int(header.split("element face ")[1].split()[0])
    assert int(canvas.get_attribute("data-vertices")) == vertices and int(canvas.get_attribute("data-triangles")) == faces
    trajectory = httpx.get(signed["shard-00000/trajectory.json"], timeout=SHORT).json()
    assert int(canvas.get_attribute("data-path")) == sum(f["cameraToWorld"] is not None for f in trajectory["frames"]) >= 2
    colours, covered = _drawn(_canvas_pixels(driver))
    # The mesh covers 13.8 % of the canvas at the initial view (15.6 % before the runner dropped
    # depth along silhouettes before fusion, geometry/depth_filters.py); a blank scene covers 0.
    assert colours > 500 and covered > 0.12, (colours, covered)
    opened = driver.execute_script("return performance.getEntriesByName('viewer-open', 'measure')[0].duration")
    print(f"\nviewer open (click to first frame): {opened:.0f} ms for {shown_kind} of {faces} triangles, {len(mesh_bytes)} bytes")
    _axe(driver, "3D viewer")
    driver.execute_script("document.getElementById('viewer-h').scrollIntoView()")
    shots(driver, "12-viewer-3d")

    # Orbit (drag), then reset: the picture changes, and the reset brings the first one back.
    first = _canvas_pixels(driver)
    ActionChains(driver).move_to_element(canvas).click_and_hold().move_by_offset(180, 40).release().perform()
    wait_until("the view to turn", lambda: not np.array_equal(_canvas_pixels(driver), first), SHORT)
    shots(driver, "13-viewer-orbited")
    driver.find_element("css selector", "#viewer-reset").click()
    wait_until("the reset view", lambda: np.abs(_canvas_pixels(driver).astype(int) - first).mean() < 1.0, SHORT)

    # The floor plan: the SVG decoded as an image, and the manifest's areas.
    img = driver.find_element("css selector", "#plan-img")
    wait_until("the floor plan image", lambda: driver.execute_script("return arguments[0].complete && arguments[0].naturalWidth", img), SHORT)
    assert img.get_attribute("src").split("?")[0] == signed["shard-00000/floorplan.svg"].split("?")[0]  # signed per second
    plan = manifest["floorplan"]
    rows = driver.find_elements("css selector", "#plan-areas tbody tr")
    assert [(r.get_attribute("data-room"), float(r.find_element("css selector", "td[data-area]").get_attribute("data-area")))
            for r in rows] == [(room["name"], room["areaM2"]) for room in plan["rooms"]]
    assert [r.find_elements("css selector", "td")[1].text for r in rows] == [f"{room['areaM2']:.2f}" for room in plan["rooms"]]
    total = driver.find_element("css selector", "#plan-total")
    assert float(total.get_attribute("data-area")) == plan["areaM2"] and total.text == f"{plan['areaM2']:.2f}"
    _axe(driver, "floor plan")
    shots(driver, "14-floor-plan")
    client.close()
