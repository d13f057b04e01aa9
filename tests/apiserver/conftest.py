"""Real servers for the front end's tests: Redis (hack/redis.sh), stripe-mock
(hack/stripe-mock.sh), MinIO (hack/minio.sh), the local control plane with the operator and
node agent (tests/conftest.py), and the app itself served by uvicorn in a thread.

Every server starts once per session on a free port, with state under
$SPATIALFORGE_STATE/apiserver, and stops at the end. A missing server fails the test with
instructions; nothing is skipped.
"""

from __future__ import annotations

import asyncio
import os
import secrets
import shutil
import subprocess
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import pytest
import uvicorn

from spatialforge.devcluster.plane import REPO, STATE, Cluster
from spatialforge.devcluster.ports import free_port
from tests.timeouts import MEDIUM, SHORT

HACK = REPO / "hack"
API_STATE = STATE / "apiserver"
# Test secrets: long, random per session, never example values.
SECRET_KEY = secrets.token_urlsafe(48)
STRIPE_KEY = "sk_test_" + secrets.token_hex(24)
STRIPE_WEBHOOK_SECRET = "whsec_" + secrets.token_hex(24)
BUCKET = "sf-api-tests"


def _script_env(**extra: str) -> dict[str, str]:
    return {**os.environ, "SPATIALFORGE_STATE": str(API_STATE), **extra}


def _exports(text: str) -> dict[str, str]:
    out = {}
    for line in text.splitlines():
        if line.startswith("export "):
            key, _, value = line[len("export "):].partition("=")
            out[key] = value
    return out


@dataclass
class ScriptServer:
    """A server started and stopped by a hack/ script (up/down), on a fixed port for the session."""

    script: str
    port_env: str
    port: int
    env: dict[str, str] = field(default_factory=dict)

    def up(self) -> dict[str, str]:
        proc = subprocess.run(["bash", str(HACK / self.script), "up"], env=_script_env(**{self.port_env: str(self.port)}),
                              capture_output=True, text=True, timeout=120)
        if proc.returncode != 0:
            raise RuntimeError(proc.stderr[-2000:])
        self.env = _exports(proc.stdout)
        return self.env

    def down(self) -> None:
        subprocess.run(["bash", str(HACK / self.script), "down"], env=_script_env(), capture_output=True, timeout=60)


def _start(server: ScriptServer, how: str) -> ScriptServer:
    try:
        server.up()
    except RuntimeError as exc:
        pytest.fail(f"hack/{server.script} up failed. {how}\n{exc}", pytrace=False)
    return server


def _tool(name: str, version_var: str) -> Path:
    out = subprocess.run(["bash", "-c", f'source "{HACK}/lib.sh"; tool_path {name} "${version_var}"'],
                         capture_output=True, text=True, check=True)
    return Path(out.stdout.strip())


@pytest.fixture(scope="session")
def redis_server() -> Iterator[ScriptServer]:
    if not (shutil.which("redis-server") or Path("/usr/bin/redis-server").exists()):
        pytest.fail("redis-server is not installed. Install Debian's: apt-get install redis-server", pytrace=False)
    API_STATE.mkdir(parents=True, exist_ok=True)
    (API_STATE / "redis" / "dump.rdb").unlink(missing_ok=True)
    server = _start(ScriptServer("redis.sh", "REDIS_PORT", free_port()), "Install redis-server (apt-get install redis-server).")
    yield server
    server.down()


@pytest.fixture(scope="session")
def stripe_mock() -> Iterator[ScriptServer]:
    binary = _tool("stripe-mock", "STRIPE_MOCK_VERSION")
    if not binary.is_file():
        pytest.fail(f"stripe-mock not found at {binary}. Build it once with: bash hack/build-tools.sh stripe-mock",
                    pytrace=False)
    server = _start(ScriptServer("stripe-mock.sh", "STRIPE_MOCK_PORT", free_port()), "")
    yield server
    server.down()


@pytest.fixture(scope="session")
def minio() -> Iterator[ScriptServer]:
    binary = _tool("minio", "MINIO_VERSION")
    if not binary.is_file():
        pytest.fail(f"MinIO not found at {binary}. Build it once with: bash hack/build-tools.sh minio", pytrace=False)
    server = _start(ScriptServer("minio.sh", "MINIO_PORT", free_port()), "")
    yield server
    server.down()


@pytest.fixture(scope="session")
def make_settings(redis_server: ScriptServer, stripe_mock: ScriptServer, minio: ScriptServer, cluster: Cluster):
    from spatialforge.apiserver.core.config import Settings

    def make(**overrides: Any) -> Settings:
        values: dict[str, Any] = dict(
            secret_key=SECRET_KEY, redis_url=redis_server.env["SPATIALFORGE_API_REDIS_URL"],
            kubeconfig=str(cluster.kubeconfig), s3_endpoint=minio.env["SPATIALFORGE_S3_ENDPOINT"],
            s3_access_key_id=minio.env["AWS_ACCESS_KEY_ID"], s3_secret_access_key=minio.env["AWS_SECRET_ACCESS_KEY"],
            bucket=BUCKET, stripe_api_key=STRIPE_KEY, stripe_api_base=stripe_mock.env["SPATIALFORGE_API_STRIPE_API_BASE"],
            stripe_webhook_secret=STRIPE_WEBHOOK_SECRET, webhook_allow=["127.0.0.1/32"],
            webhook_backoff_seconds=0.2, webhook_max_attempts=4, log_json=False,
            # Every test calls from 127.0.0.1: the failed-auth limit is tested with its own server.
            failed_auth_per_ip_per_minute=100_000,
            metrics_port=0)  # several apps per process: a test that needs metrics gives a free port
        values.update(overrides)
        return Settings(**values)

    return make


class ServerThread:
    """The app served by uvicorn in a thread (as httpx's own tests do)."""

    def __init__(self, settings: Any) -> None:
        from spatialforge.apiserver.main import create_app

        self.app = create_app(settings)
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        # proxy_headers=False as `spatialforge api serve` runs it: the app's trusted_proxies decide.
        config = uvicorn.Config(self.app, host="127.0.0.1", port=self.port, log_config=None, access_log=False,
                                lifespan="on", timeout_graceful_shutdown=3, proxy_headers=False)
        self.server = uvicorn.Server(config)
        self.thread = threading.Thread(target=self.server.run, daemon=True)

    def start(self, *, ready: bool = True) -> ServerThread:
        """Start serving; wait for /readyz 200 (or, with ready=False, for the socket only)."""
        self.thread.start()
        deadline = time.monotonic() + MEDIUM
        last = None
        while time.monotonic() < deadline:
            if self.server.started and not ready:
                return self
            if self.server.started:
                try:
                    last = httpx.get(f"{self.url}/readyz", timeout=5)
                    if last.status_code == 200:
                        return self
                except httpx.HTTPError as exc:
                    last = exc
            if not self.thread.is_alive():
                break
            time.sleep(0.1)
        raise AssertionError(f"API server did not become ready: {getattr(last, 'text', last)}")

    def stop(self) -> None:
        self.server.should_exit = True
        self.thread.join(30)

    @property
    def services(self) -> Any:
        """The lifespan's services (`app.state.job_submission`, `.job_reads`, `.billing`, `.tenants`, ...)."""
        return self.app.state


@pytest.fixture(scope="session")
def api(make_settings, operator) -> Iterator[ServerThread]:
    server = ServerThread(make_settings()).start()
    yield server
    server.stop()


def run(coro: Any) -> Any:
    """Run a coroutine to completion from a sync test (on a fresh loop)."""
    return asyncio.run(coro)


@pytest.fixture(scope="session")
def admin_key(make_settings) -> str:
    from spatialforge.apiserver.services.tenants import Tenants
    import redis.asyncio as aioredis

    settings = make_settings()

    async def go() -> str:
        r = aioredis.Redis.from_url(settings.redis_url, decode_responses=True)
        try:
            return (await Tenants(r, settings.hmac_key()).create_key("ops", role="admin")).key
        finally:
            await r.aclose()

    return run(go())


@dataclass
class Tenant:
    id: str
    key: str
    key_id: str
    namespace: str
    prefix: str
    api: ServerThread

    @property
    def headers(self) -> dict[str, str]:
        return {"X-API-Key": self.key}

    def client(self, **kwargs: Any) -> httpx.Client:
        return httpx.Client(base_url=self.api.url, headers=self.headers, timeout=30, **kwargs)

    def depth_spec(self, n: int = 1, **overrides: Any) -> dict[str, Any]:
        spec = {"inputs": [f"{self.prefix}inputs/img-{i}.jpg" for i in range(n)],
                "output": {"uri": f"{self.prefix}results"}, "placement": {"gpus": 0}}
        spec.update(overrides)
        return spec

    def recon_spec(self, **overrides: Any) -> dict[str, Any]:
        spec = {"input": f"{self.prefix}inputs/walk.mp4", "output": {"uri": f"{self.prefix}results"},
                "quality": "draft", "placement": {"gpus": 0}}
        spec.update(overrides)
        return spec


@pytest.fixture
def admin(api: ServerThread, admin_key: str) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=api.url, headers={"X-API-Key": admin_key}, timeout=30) as c:
        yield c


@pytest.fixture
def make_tenant(api: ServerThread, admin: httpx.Client, behaviour, cluster: Cluster) -> Iterator[Callable[..., Tenant]]:
    """A fresh tenant with a key and a plan; its pods succeed after `seconds`. Its namespace
    (and so its resources) is deleted after the test."""
    made: list[str] = []

    def make(plan: str = "pro", *, seconds: float = 1, **limits: Any) -> Tenant:
        tenant = f"t{uuid.uuid4().hex[:10]}"
        r = admin.post("/v1/admin/keys", json={"tenant": tenant})
        assert r.status_code == 201, r.text
        created = r.json()
        r = admin.put(f"/v1/admin/tenants/{tenant}/plan", json={"plan": plan, **limits})
        assert r.status_code == 200, r.text
        namespace = f"sf-{tenant}"
        made.append(namespace)
        behaviour.set(namespace, seconds=seconds)
        return Tenant(tenant, created["key"], created["key_id"], namespace, f"s3://{BUCKET}/tenants/{tenant}/", api)

    yield make
    if made:
        cluster.kubectl("delete", "namespace", *made, "--wait=false", check=False)


def wait_until(what: str, probe: Callable[[], Any], timeout: float = SHORT, interval: float = 0.2) -> Any:
    deadline = time.monotonic() + timeout
    last = None
    while time.monotonic() < deadline:
        last = probe()
        if last:
            return last
        time.sleep(interval)
    raise AssertionError(f"timed out after {timeout:.0f}s waiting for {what} (last: {last!r})")
