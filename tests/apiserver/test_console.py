"""The web console (/console) in a real browser on the real stack: headless Chromium (Debian's
package) driven by Selenium, the front end with Redis, MinIO, stripe-mock and the plane, the
session operator, and a real depth server of the tiny metric model behind a DepthPool.

The page is checked against the API itself: the metres shown on hover are the NPY map's value
at that pixel, the distance shown is what /v1/measure answers for the points sent, each error
line is the API's own message. axe-core (vendored, tests/apiserver/vendor/) finds no serious
or critical violation on any view. Screenshots go to $SF_SCREENSHOTS when set
(docs/screenshots/ for the README), else to a temporary directory.
"""

from __future__ import annotations

import base64
import io
import json
import logging
import os
import subprocess
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import boto3
import httpx
import numpy as np
import pytest

from spatialforge.devcluster.plane import Cluster
from spatialforge.crds.layout import shard_prefix
from tests.apiserver.conftest import BUCKET, ServerThread, Tenant, wait_until
from tests.apiserver.test_sync import DepthServer, _photo, _pod_address, _pool, _start_server, _stop
from tests.timeouts import MEDIUM, SHORT

CHROMIUM = Path("/usr/bin/chromium")
CHROMEDRIVER = Path("/usr/bin/chromedriver")
AXE = Path(__file__).parent / "vendor" / "axe-core-4.14.1" / "axe.min.js"
PHOTO = _photo(width=160, height=120, seed=7)


@dataclass
class Console:
    app: ServerThread
    server: DepthServer
    access: list[str]  # the front end's access-log lines while the module ran

    @property
    def url(self) -> str:
        return self.app.url + "/console/"


class _Lines(logging.Handler):
    def __init__(self, lines: list[str]) -> None:
        super().__init__()
        self.lines = lines

    def emit(self, record: logging.LogRecord) -> None:
        self.lines.append(record.getMessage())


@pytest.fixture(scope="module")
def console(cluster: Cluster, make_settings, api, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Console]:
    from spatialforge.crds.v1alpha1.common import ModelSize, ModelVariant
    from spatialforge.runner.models.tiny import build_tiny_model_dir

    tmp = tmp_path_factory.mktemp("console")
    models = build_tiny_model_dir(tmp / "models", sizes=(ModelSize.small,), variants=(ModelVariant.metric_indoor,))
    address = _pod_address()
    server = _start_server(tmp, models, address, "--max-batch", "2", "--max-wait-ms", "2")
    ns = f"console-{uuid.uuid4().hex[:6]}"
    cluster.apply({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": ns}})
    _pool(cluster, ns, "console", [(address, server.port, True)])
    lines: list[str] = []
    handler = _Lines(lines)
    access = logging.getLogger("spatialforge.apiserver.access")
    app = ServerThread(make_settings(depth_pools=f"{ns}/console", pool_refresh_seconds=0.5)).start()
    access.addHandler(handler)
    try:
        yield Console(app, server, lines)
    finally:
        access.removeHandler(handler)
        app.stop()
        _stop(server)
        subprocess.run(["ip", "addr", "del", f"{address}/32", "dev", "lo"], capture_output=True)
        cluster.kubectl("delete", "namespace", ns, "--wait=false", check=False)


@pytest.fixture(scope="module")
def browser() -> Iterator[Any]:
    """Headless Chromium through /usr/bin/chromedriver (named, so Selenium Manager never
    downloads a driver or a browser)."""
    missing = [str(p) for p in (CHROMIUM, CHROMEDRIVER) if not p.is_file()]
    if missing:
        pytest.fail(f"{', '.join(missing)} missing: run `make install` (hack/install.sh), or "
                    "apt-get install chromium chromium-driver", pytrace=False)
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    os.environ["SE_OFFLINE"] = "true"
    options = webdriver.ChromeOptions()
    options.binary_location = str(CHROMIUM)
    for arg in ("--headless=new", "--no-sandbox", "--disable-dev-shm-usage", "--disable-gpu",
                "--window-size=1280,1000", "--disable-extensions", "--no-first-run"):
        options.add_argument(arg)
    driver = webdriver.Chrome(options=options, service=Service(executable_path=str(CHROMEDRIVER)))
    driver.set_script_timeout(MEDIUM)
    try:
        yield driver
    finally:
        driver.quit()


@pytest.fixture(scope="module")
def shots(tmp_path_factory: pytest.TempPathFactory) -> Callable[[Any, str], None]:
    where = Path(os.environ.get("SF_SCREENSHOTS") or tmp_path_factory.mktemp("screenshots"))
    where.mkdir(parents=True, exist_ok=True)

    def shot(driver: Any, name: str) -> None:
        assert driver.save_screenshot(str(where / f"console-{name}.png")), name

    return shot


def _axe(driver: Any, view: str) -> None:
    """No serious or critical axe-core violation on the view now shown."""
    if not driver.execute_script("return typeof window.axe !== 'undefined'"):
        driver.execute_script(AXE.read_text())
    result = driver.execute_async_script(
        "const done = arguments[arguments.length - 1];"
        "axe.run(document, {resultTypes: ['violations']}).then(r => done(r.violations.map("
        "v => ({id: v.id, impact: v.impact, help: v.help, nodes: v.nodes.map(n => n.target.join(' '))}))),"
        " e => done([{id: 'axe-error', impact: 'critical', help: String(e), nodes: []}]));")
    bad = [v for v in result if v["impact"] in ("serious", "critical")]
    assert not bad, f"axe on the {view} view: {json.dumps(bad, indent=1)}"


def _wait(driver: Any, what: str, probe: Callable[[], Any], timeout: float = SHORT) -> Any:
    """Poll `probe`; an element the page re-rendered between finding and reading it (the jobs list
    is redrawn on every poll) is a miss to retry, not a failure."""
    from selenium.common.exceptions import StaleElementReferenceException

    def tolerant() -> Any:
        try:
            return probe()
        except StaleElementReferenceException:
            return None
    return wait_until(what, tolerant, timeout=timeout, interval=0.2)


def _click(driver: Any, what: str, css: str) -> None:
    """Click what `css` finds; found just before a redraw of the jobs list, it is gone by the
    click, so it is found again."""
    def clicked() -> bool:
        driver.find_element("css selector", css).click()
        return True
    _wait(driver, what, clicked)


def _text(driver: Any, css: str) -> str:
    from selenium.common.exceptions import NoSuchElementException, StaleElementReferenceException

    try:
        el = driver.find_element("css selector", css)
        return el.text if el.is_displayed() else ""
    except (NoSuchElementException, StaleElementReferenceException):
        return ""


def _error_line(driver: Any) -> str:
    return _text(driver, "#error")


def _api_message(r: httpx.Response) -> str:
    return str(r.json()["error"]["message"])


def _sign_in(driver: Any, console: Console, key: str) -> None:
    driver.get(console.url)
    driver.execute_script("sessionStorage.clear()")
    driver.get(console.url)
    field = _wait(driver, "the key form", lambda: driver.find_elements("css selector", "#api-key"))[0]
    field.send_keys(key)
    driver.find_element("css selector", "#key-form button").click()


def _hover_at(driver: Any, element: Any, fx: float, fy: float) -> None:
    """Move the real pointer to a fraction of the element's box (Selenium offsets are from its centre)."""
    from selenium.webdriver.common.action_chains import ActionChains

    driver.execute_script("arguments[0].scrollIntoView({block: 'center'})", element)  # offsets are from the in-view centre
    size = element.size
    ActionChains(driver).move_to_element_with_offset(
        element, int((fx - 0.5) * size["width"]), int((fy - 0.5) * size["height"])).perform()


def _click_at(driver: Any, element: Any, fx: float, fy: float) -> None:
    from selenium.webdriver.common.action_chains import ActionChains

    driver.execute_script("arguments[0].scrollIntoView({block: 'center'})", element)  # offsets are from the in-view centre
    size = element.size
    ActionChains(driver).move_to_element_with_offset(
        element, int((fx - 0.5) * size["width"]), int((fy - 0.5) * size["height"])).click().perform()


def test_console_files_carry_a_strict_csp_and_no_cors(console: Console, make_settings) -> None:
    with httpx.Client(base_url=console.app.url, timeout=SHORT) as c:
        assert c.get("/console").status_code == 308 and c.get("/console").headers["location"] == "/console/"
        for path in ("/console/", "/console/app.js", "/console/api.js", "/console/console.css", "/console/missing.js"):
            r = c.get(path, headers={"Origin": "https://evil.example"})
            assert r.status_code == (404 if "missing" in path else 200), (path, r.status_code)
            assert len(r.headers.get_list("content-security-policy")) == 1, path  # browsers enforce every one
            csp = r.headers["content-security-policy"]
            assert "script-src 'self'" in csp and "unsafe-inline" not in csp and "unsafe-eval" not in csp, csp
            assert "frame-ancestors 'none'" in csp and "default-src 'none'" in csp and "connect-src 'self'" in csp
            assert r.headers["x-content-type-options"] == "nosniff" and r.headers["cache-control"] == "no-cache"
            assert not any(h.startswith("access-control-") for h in r.headers), (path, dict(r.headers))
        page = c.get("/console/").text
        assert "<script type=\"module\" src=\"app.js\"></script>" in page and "<script>" not in page
        assert " style=" not in page and "http" not in page  # nothing inline, nothing from another origin
    off = ServerThread(make_settings(console_enabled=False)).start()
    try:
        # The console adds no endpoint: only the static mount (and its redirect) differ, and the API schema is the same.
        added = _routes(console.app) - _routes(off)
        assert added == {("APIRoute", "/console"), ("Mount", "/console")}, added
        assert console.app.app.openapi()["paths"].keys() == off.app.openapi()["paths"].keys()
        r = httpx.get(off.url + "/console/", timeout=SHORT)
        assert r.status_code == 404 and r.json()["error"]["code"] == "not_found"
    finally:
        off.stop()


def test_console_in_a_real_browser(console: Console, browser: Any, shots: Callable[[Any, str], None],
                                   make_tenant: Callable[..., Tenant], admin: httpx.Client, minio,
                                   tmp_path: Path) -> None:
    driver = browser
    tenant, other = make_tenant("pro", seconds=3), make_tenant("free")
    api = httpx.Client(base_url=console.app.url, headers=tenant.headers, timeout=MEDIUM)

    # A wrong key: the API's one-line reason, and the key form stays.
    wrong = httpx.get(console.app.url + "/v1/plan", headers={"X-API-Key": "sf_live_" + "x" * 40}, timeout=SHORT)
    assert wrong.status_code == 401
    _sign_in(driver, console, "sf_live_" + "x" * 40)
    _wait(driver, "the wrong-key message", lambda: _error_line(driver) == _api_message(wrong))
    assert driver.execute_script("return sessionStorage.length") == 0
    assert not driver.find_element("css selector", "#nav").is_displayed()
    _axe(driver, "sign-in")
    shots(driver, "01-wrong-key")

    # The right key: the jobs view (empty), then a job submitted through the API appears and
    # moves to Succeeded without a reload.
    _sign_in(driver, console, tenant.key)
    _wait(driver, "the jobs view", lambda: "No jobs yet" in _text(driver, "main"))
    driver.execute_script("window.__notReloaded = true")
    _axe(driver, "jobs")
    r = api.post("/v1/depth-batches", json=tenant.depth_spec(2))
    assert r.status_code == 202, r.text
    job = r.json()["id"]
    row = f"tr[data-job-id='{job}']"
    _wait(driver, "the new job's row", lambda: driver.find_elements("css selector", row))
    shots(driver, "02-jobs-live")
    seen: set[str] = set()

    def phase() -> bool:
        rows = driver.find_elements("css selector", row)
        current = rows[0].get_attribute("data-phase") if rows else ""
        seen.add(current or "")
        return current == "Succeeded"

    _wait(driver, "the row to reach Succeeded", phase, timeout=MEDIUM)
    assert driver.execute_script("return window.__notReloaded === true"), "the page reloaded"
    assert api.get(f"/v1/jobs/{job}").json()["phase"] == "Succeeded"
    shots(driver, "03-jobs-succeeded")

    # The job's files as signed download links (written as the runner would).
    s3 = boto3.client("s3", endpoint_url=minio.env["SPATIALFORGE_S3_ENDPOINT"], region_name="us-east-1",
                      aws_access_key_id=minio.env["AWS_ACCESS_KEY_ID"],
                      aws_secret_access_key=minio.env["AWS_SECRET_ACCESS_KEY"])
    base = shard_prefix(f"{tenant.prefix}results", tenant.namespace, job, 0).removeprefix(f"s3://{BUCKET}/")
    s3.put_object(Bucket=BUCKET, Key=f"{base}/manifest.json", Body=b'{"console": true}')
    _click(driver, "the job's link in the list", f"{row} a")
    links = _wait(driver, "the file links", lambda: driver.find_elements("css selector", "#files a"))
    assert links[0].text == "shard-00000/manifest.json"
    assert httpx.get(links[0].get_attribute("href"), timeout=SHORT).content == b'{"console": true}'
    history = _text(driver, "#conditions")
    assert "Succeeded" in history, history
    _axe(driver, "job")
    shots(driver, "04-job-files")

    # Another tenant's job id, and a made-up one: the not-found view with the API's message.
    r = other.client().post("/v1/depth-batches", json=other.depth_spec(1))
    assert r.status_code == 202, r.text
    for foreign in (r.json()["id"], "db-000000000000"):
        answer = api.get(f"/v1/jobs/{foreign}")
        assert answer.status_code == 404
        driver.get(f"{console.url}#/jobs/{foreign}")
        _wait(driver, "the not-found view", lambda: _text(driver, "#not-found") == _api_message(answer))
    _axe(driver, "not-found")
    shots(driver, "05-not-found")

    # Usage: plan, units used and left, per-minute limit, as the API says.
    plan, usage = api.get("/v1/plan").json(), api.get("/v1/usage").json()
    driver.get(f"{console.url}#/usage")
    _wait(driver, "the usage view", lambda: _text(driver, "dd[data-field='plan']") == plan["plan"])
    assert _text(driver, "dd[data-field='units-used']") == str(usage["units_used"])
    assert _text(driver, "dd[data-field='units-left']") == str(usage["units_limit"] - usage["units_used"])
    assert _text(driver, "dd[data-field='per-minute-limit']") == str(plan["rate_per_minute"])
    _axe(driver, "usage")
    shots(driver, "06-usage")

    # Depth: choose a photo; hover a pixel; the metres shown are the NPY map's value there.
    photo = tmp_path / "room.jpg"
    photo.write_bytes(PHOTO)
    driver.get(f"{console.url}#/depth")
    chooser = _wait(driver, "the photo chooser", lambda: driver.find_elements("css selector", "#photo"))[0]
    chooser.send_keys(str(photo))
    _wait(driver, "the depth map", lambda: driver.find_element("css selector", "#depth-status").get_attribute("data-ready"),
          timeout=MEDIUM)
    npy = api.post("/v1/depth", files={"image": ("room.jpg", PHOTO)}, headers={"Accept": "application/x-npy"})
    assert npy.status_code == 200, npy.text
    truth = np.load(io.BytesIO(npy.content))
    canvas = driver.find_element("css selector", "#depth-canvas")
    for fx, fy in ((0.25, 0.3), (0.7, 0.8)):
        _hover_at(driver, canvas, fx, fy)
        hover = driver.find_element("css selector", "#hover")
        _wait(driver, "the hover readout", lambda: hover.get_attribute("data-depth"))
        x, y = int(hover.get_attribute("data-x")), int(hover.get_attribute("data-y"))
        assert abs(x - fx * truth.shape[1]) <= 2 and abs(y - fy * truth.shape[0]) <= 2, (x, y, truth.shape)
        shown = float(hover.text.split(":")[1].split()[0])
        want = float(truth[y, x])
        assert abs(shown - want) <= 0.0005 + 1e-3 * abs(want), (hover.text, want)
        assert hover.text.endswith(" m")
    # The tiny random model's metric map is flat (10 m, its sigmoid saturates), so the page's
    # float16 decoding is also checked on a varied map: the same module, in this page.
    rng = np.random.default_rng(3)
    varied = (rng.random((7, 11)) * 20 - 5).astype("<f2")
    decoded = driver.execute_async_script(
        "const [b64, done] = [arguments[0], arguments[arguments.length - 1]];"
        "import('/console/depthmap.js').then(m => {"
        " const bytes = Uint8Array.from(atob(b64), c => c.charCodeAt(0));"
        " const map = m.decode(bytes.buffer, '7,11', '<f2');"
        " done([map.width, map.height, Array.from(map.values), map.min, map.max]); }, e => done(String(e)));",
        base64.b64encode(varied.tobytes()).decode())
    assert decoded[:2] == [11, 7], decoded
    assert np.array_equal(np.array(decoded[2], dtype=np.float32), varied.astype(np.float32).ravel())
    assert decoded[3:] == [float(varied.min()), float(varied.max())]
    _axe(driver, "depth")
    shots(driver, "07-depth-hover")

    # Measure: two clicks on the photo; the page shows what /v1/measure answers for those points.
    overlay = driver.find_element("css selector", "#measure-canvas")
    _click_at(driver, overlay, 0.2, 0.3)
    _click_at(driver, overlay, 0.8, 0.7)
    out = driver.find_element("css selector", "#measure")
    _wait(driver, "the distance", lambda: out.get_attribute("data-distance"), timeout=MEDIUM)
    sent = json.loads(out.get_attribute("data-points"))
    again = api.post("/v1/measure", files={"image": ("room.jpg", PHOTO)}, data={"from": sent["from"], "to": sent["to"]})
    assert again.status_code == 200, again.text
    answer = again.json()
    assert abs(float(out.get_attribute("data-distance")) - answer["distance_m"]) < 1e-9
    lo, hi = answer["interval_m"]
    assert f"{answer['distance_m']:.3f} m (95 % interval {lo:.3f}–{hi:.3f} m" in out.text, out.text
    shots(driver, "08-measure")

    # A file that is not an image: the API's one-line reason, no map.
    junk = photo.with_name("notes.txt")
    junk.write_text("these are not pixels\n")
    refused = api.post("/v1/depth", files={"image": ("notes.txt", junk.read_bytes())},
                       headers={"Accept": "application/octet-stream"})
    assert refused.status_code == 422, refused.text
    driver.find_element("css selector", "#photo").send_keys(str(junk))
    _wait(driver, "the not-an-image message", lambda: _error_line(driver) == _api_message(refused), timeout=MEDIUM)
    assert not driver.find_element("css selector", "#depth-canvas").is_displayed(), "the last map is still shown"
    shots(driver, "09-not-an-image")

    # An account over its month's units: the API's reason.
    broke = make_tenant("free", monthly_units=0)
    over = httpx.post(console.app.url + "/v1/depth", headers=broke.headers, files={"image": ("room.jpg", PHOTO)},
                      timeout=MEDIUM)
    assert over.status_code == 429, over.text
    _sign_in(driver, console, broke.key)
    _wait(driver, "the jobs view", lambda: "No jobs yet" in _text(driver, "main"))
    driver.get(f"{console.url}#/depth")
    _wait(driver, "the photo chooser", lambda: driver.find_elements("css selector", "#photo"))[0].send_keys(str(photo))
    _wait(driver, "the over-quota message", lambda: _error_line(driver) == _api_message(over), timeout=MEDIUM)
    _axe(driver, "error")
    shots(driver, "10-over-quota")

    # A key revoked while the tab holds it: the next call's 401 returns to the key form with the reason.
    assert admin.delete(f"/v1/admin/keys/{broke.key_id}").status_code == 200
    revoked = httpx.get(console.app.url + "/v1/usage", headers=broke.headers, timeout=SHORT)
    assert revoked.status_code == 401
    driver.find_element("css selector", "a[href='#/usage']").click()
    _wait(driver, "the key form again", lambda: driver.find_elements("css selector", "#api-key"))
    _wait(driver, "the revoked-key message", lambda: _error_line(driver) == _api_message(revoked))
    assert driver.execute_script("return sessionStorage.length") == 0

    # The keys never appear in a URL: not in what the browser fetched, not in the access log;
    # they are kept in sessionStorage only (no localStorage, no cookie).
    urls = driver.execute_script("return performance.getEntries().map(e => e.name).concat([location.href])")
    for key in (tenant.key, broke.key):
        assert not [u for u in urls if key in u], urls
        assert not [line for line in console.access if key in line]
    assert any("/v1/depth" in line for line in console.access), console.access[-5:]
    assert driver.execute_script("return localStorage.length") == 0
    assert driver.get_cookies() == []
    api.close()



def _run_depth_stage(cluster: Cluster, namespace: str, name: str, minio_env: dict[str, str], models: Path,
                     monkeypatch: pytest.MonkeyPatch) -> None:
    """Run the runner's DepthStage on the job's own spec (read back from the plane), writing into
    its result prefix in MinIO: the session plane's pods do not run the runner image."""
    from spatialforge.runner.app import parse_resource
    from spatialforge.runner.settings import RunnerSettings
    from spatialforge.runner.stages.base import RunContext
    from spatialforge.runner.stages.depth import DepthStage

    for k, v in {**minio_env, "SPATIALFORGE_MODEL_DIR": str(models), "SPATIALFORGE_DEVICE": "cpu",
                 "HF_HUB_OFFLINE": "1"}.items():
        monkeypatch.setenv(k, v)
    obj = cluster.get("depthbatches.spatialforge.io", name, namespace)
    assert obj is not None, f"{namespace}/{name} is gone"
    spec = parse_resource(obj).spec
    DepthStage().run(spec, RunContext(namespace=namespace, name=name, settings=RunnerSettings.from_env()))


def _loaded_previews(driver: Any) -> list[int]:
    return driver.execute_script(
        "return Array.from(document.querySelectorAll('#previews img')).map(i => i.complete ? i.naturalWidth : 0)")


def _all_loaded(driver: Any, count: int) -> list[int] | None:
    """The previews' natural widths once `count` are shown and every one has decoded."""
    widths = _loaded_previews(driver)
    return widths if len(widths) == count and all(widths) else None


def test_console_depth_batch_of_several_images(console: Console, browser: Any, shots: Callable[[Any, str], None],
                                               make_tenant: Callable[..., Tenant], cluster: Cluster, minio,
                                               tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Three photos chosen at once go up through the signed upload forms and come back as one
    DepthBatch: its row reaches Succeeded without a reload, it shows the units the API charged,
    and its previews (the runner's own) page 2 at a time. A HEIC photo, which Chromium cannot
    show, still gets its depth, with a one-line note."""
    from selenium.webdriver.support.ui import Select
    from spatialforge.crds.v1alpha1.common import ModelSize, ModelVariant
    from spatialforge.runner.models.tiny import build_tiny_model_dir

    driver = browser
    tenant = make_tenant("pro", seconds=1)
    api = httpx.Client(base_url=console.app.url, headers=tenant.headers, timeout=MEDIUM)
    paths = []
    for i in range(3):
        paths.append(tmp_path / f"room {i}.jpg")  # a space: the console makes an upload name of it
        paths[-1].write_bytes(_photo(width=64 + 16 * i, height=48, seed=i))
    _sign_in(driver, console, tenant.key)
    _wait(driver, "the jobs view", lambda: "No jobs yet" in _text(driver, "main"))
    driver.get(f"{console.url}#/depth")
    chooser = _wait(driver, "the batch chooser", lambda: driver.find_elements("css selector", "#batch-photos"))[0]
    driver.execute_script("window.__notReloaded = true")
    chooser.send_keys("\n".join(str(p) for p in paths))
    _wait(driver, "the chosen count", lambda: driver.find_element("css selector", "#batch-status").get_attribute("data-chosen") == "3")
    Select(driver.find_element("css selector", "#batch-gpus")).select_by_value("0")
    _axe(driver, "depth batch")
    shots(driver, "15-batch-chosen")
    driver.find_element("css selector", "#batch-submit").click()

    # The jobs list follows it to Succeeded, with no reload; the units are the API's.
    _wait(driver, "the jobs view after submitting", lambda: driver.execute_script("return location.hash") == "#/jobs",
          timeout=MEDIUM)
    assert not _error_line(driver), _error_line(driver)
    jobs = api.get("/v1/jobs").json()["data"]
    assert len(jobs) == 1 and jobs[0]["kind"] == "DepthBatch", jobs
    job = jobs[0]["id"]
    row = f"tr[data-job-id='{job}']"
    _wait(driver, "the batch to reach Succeeded in the list",  # read in the page: the rows are redrawn every 2 s
          lambda: driver.execute_script("return document.querySelector(arguments[0])?.dataset.phase", row) == "Succeeded",
          timeout=MEDIUM)
    assert driver.execute_script("return window.__notReloaded === true"), "the page reloaded"
    answer = api.get(f"/v1/jobs/{job}").json()
    assert answer["phase"] == "Succeeded" and answer["units"] == 3, answer
    assert driver.execute_script("return document.querySelector(arguments[0]).textContent", f"{row} td.units") == "3"
    obj = cluster.get("depthbatches.spatialforge.io", job, tenant.namespace)
    assert obj is not None and len(obj["spec"]["inputs"]) == 3, obj
    assert all(u.startswith(f"{tenant.prefix}inputs/") for u in obj["spec"]["inputs"]), obj["spec"]["inputs"]
    assert sorted(obj["spec"]["output"]["formats"]) == ["npy", "png16", "preview"]

    # The runner's outputs for the uploaded files, then the job view pages through the previews.
    models = build_tiny_model_dir(tmp_path / "models", sizes=(ModelSize.small,), variants=(ModelVariant.relative,))
    _run_depth_stage(cluster, tenant.namespace, job, minio.env, models, monkeypatch)
    listed = api.get(f"/v1/jobs/{job}/results").json()["files"]
    previews = sorted(f["key"] for f in listed if f["key"].endswith(".preview.jpg"))
    assert len(previews) == 3, [f["key"] for f in listed]
    _click(driver, "the job's link in the list", f"{row} a")
    _wait(driver, "the previews", lambda: driver.find_elements("css selector", "#preview-page"), timeout=MEDIUM)
    assert _text(driver, "dd[data-field='units']") == str(answer["units"])
    page = driver.find_element("css selector", "#preview-page")
    assert page.get_attribute("data-pages") == "1" and len(_loaded_previews(driver)) == 3
    Select(driver.find_element("css selector", "#preview-size")).select_by_value("2")
    seen: list[str] = []
    for number, count in ((1, 2), (2, 1)):
        _wait(driver, f"page {number}", lambda n=number: page.get_attribute("data-page") == str(n))
        assert page.get_attribute("data-pages") == "2" and page.text.startswith(f"Page {number} of 2"), page.text
        widths = _wait(driver, f"page {number}'s previews decoded",
                       lambda c=count: _all_loaded(driver, c))
        assert all(x > 0 for x in widths), widths
        seen += [f.get_attribute("data-key") for f in driver.find_elements("css selector", "#previews figure")]
        assert [a.text for a in driver.find_elements("css selector", "#previews figcaption a")] == ["16-bit PNG", "NPY"] * count
        if number == 1:
            assert driver.find_element("css selector", "#preview-prev").get_attribute("disabled")
            _axe(driver, "batch previews")
            shots(driver, "16-batch-previews")
            driver.find_element("css selector", "#preview-next").click()
    assert seen == previews and driver.find_element("css selector", "#preview-next").get_attribute("disabled")
    driver.find_element("css selector", "#preview-prev").click()
    _wait(driver, "back to page 1", lambda: page.get_attribute("data-page") == "1")

    # A HEIC photo: the API reads it, Chromium cannot show it; the depth is shown with a note.
    import pillow_heif
    from PIL import Image

    heic = tmp_path / "room.heic"
    pillow_heif.from_pillow(Image.open(io.BytesIO(PHOTO))).save(str(heic), quality=90)
    driver.get(f"{console.url}#/depth")
    _wait(driver, "the photo chooser", lambda: driver.find_elements("css selector", "#photo"))[0].send_keys(str(heic))
    _wait(driver, "the HEIC depth", lambda: driver.find_element("css selector", "#depth-status").get_attribute("data-ready"),
          timeout=MEDIUM)
    assert driver.find_element("css selector", "#depth-canvas").is_displayed()
    assert "cannot display room.heic" in _text(driver, "#photo-note"), _text(driver, "#photo-note")
    assert not driver.find_element("css selector", "#photo-img").is_displayed()
    shots(driver, "17-heic-depth")
    api.close()


def _routes(server: ServerThread) -> set[tuple[str, str]]:
    return {(type(r).__name__, str(getattr(r, "path", ""))) for r in server.app.routes}
