"""The operator and front-end images, built from Dockerfile.operator by hack/docker.sh (a private
Docker engine, a Debian base, no registry) and started the way the chart starts them: a read-only
root, uid 10001, no capabilities, no privilege escalation, /tmp as the only writable mount.

The runner image (gigabytes of CUDA torch) is built and run by the e2e (hack/e2e.sh), not here.
"""

from __future__ import annotations

import base64
import json
import os
import subprocess
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
import yaml

from spatialforge.devcluster.plane import REPO, Cluster
from spatialforge.devcluster.ports import free_port
from tests.timeouts import MEDIUM

pytestmark = pytest.mark.integration
TAG = "test"
DOCKER = os.environ.get("SPATIALFORGE_CACHE", str(Path.home() / ".cache" / "spatialforge")) + "/docker/docker.sock"
ENV = {**os.environ, "DOCKER_HOST": f"unix://{DOCKER}", "TAG": TAG}
HARDENED = ["--read-only", "--user", "10001:10001", "--cap-drop", "ALL", "--security-opt", "no-new-privileges",
            "--tmpfs", "/tmp"]


def docker(*args: str, timeout: float = 120) -> subprocess.CompletedProcess[str]:
    return subprocess.run(["docker", *args], capture_output=True, text=True, timeout=timeout, env=ENV)


@pytest.fixture(scope="module")
def images() -> Iterator[dict[str, float]]:
    """Both images built now (layers cached between runs); the engine is stopped afterwards when
    this module started it."""
    script = str(REPO / "hack" / "docker.sh")
    was_up = subprocess.run([script, "status"], capture_output=True, env=ENV).returncode == 0
    start = time.monotonic()
    proc = subprocess.run([script, "build", "operator", "apiserver"],
                          capture_output=True, text=True, timeout=1800, env=ENV)
    if proc.returncode != 0:
        pytest.fail("hack/docker.sh build operator apiserver failed (it needs root and Debian's docker.io, "
                    f"which it installs):\n{proc.stderr[-3000:]}")
    yield {"build_s": time.monotonic() - start}
    if not was_up:
        subprocess.run([script, "down"], capture_output=True, env=ENV)


@pytest.fixture
def kubeconfig(tmp_path: Path, cluster: Cluster) -> Path:
    """The plane's admin kubeconfig, self-contained (CA inline) and readable only by uid 10001,
    the user the images run as."""
    config = yaml.safe_load(cluster.kubeconfig.read_text())
    for entry in config["clusters"]:
        ca = Path(entry["cluster"].pop("certificate-authority"))
        entry["cluster"]["certificate-authority-data"] = base64.b64encode(ca.read_bytes()).decode()
    path = tmp_path / "kubeconfig"
    path.write_text(yaml.safe_dump(config))
    os.chown(path, 10001, 10001)
    path.chmod(0o600)
    return path


@pytest.fixture
def container() -> Iterator[list[str]]:
    """Names of containers a test starts; removed afterwards."""
    names: list[str] = []
    yield names
    for name in names:
        docker("rm", "-f", name)


def test_images_are_non_root_with_their_entry_points(images) -> None:
    for image, cmd in (("operator", ["python", "-m", "spatialforge.operator"]),
                       ("apiserver", ["python", "-m", "uvicorn", "spatialforge.apiserver.main:create_app", "--factory"])):
        info = json.loads(docker("image", "inspect", f"spatialforge/{image}:{TAG}").stdout)[0]["Config"]
        assert info["User"] == "10001:10001", image
        assert info["Cmd"][: len(cmd)] == cmd, image
        assert not any(e.startswith(("PIP_", "PIP_CERT")) for e in info["Env"]), f"{image} keeps a build setting"


def test_operator_without_credentials_says_so_in_one_line(images) -> None:
    proc = docker("run", "--rm", *HARDENED, f"spatialforge/operator:{TAG}")
    assert proc.returncode != 0
    lines = [line for line in proc.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and "no Kubernetes credentials" in lines[0], proc.stderr


def test_operator_answers_health_as_a_standby(images, cluster: Cluster, namespace: str, container,
                                              kubeconfig: Path) -> None:
    """On the real plane, with a Lease another holder keeps: the hardened operator starts, finds the
    CRDs, waits as a standby (so it touches no resource) and answers /healthz."""
    lease = f"image-test-{uuid.uuid4().hex[:6]}"
    now = time.strftime("%Y-%m-%dT%H:%M:%S.000000Z", time.gmtime())
    cluster.apply({"apiVersion": "coordination.k8s.io/v1", "kind": "Lease", "metadata": {"name": lease},
                   "spec": {"holderIdentity": "someone-else", "leaseDurationSeconds": 3600,
                            "acquireTime": now, "renewTime": now}}, namespace)
    port = free_port()
    name = f"sf-operator-{uuid.uuid4().hex[:8]}"
    container.append(name)
    proc = docker("run", "-d", "--name", name, "--network", "host", *HARDENED,
                  "-v", f"{kubeconfig}:/etc/spatialforge/kubeconfig:ro",
                  "-e", "KUBECONFIG=/etc/spatialforge/kubeconfig", "-e", f"SPATIALFORGE_NAMESPACE={namespace}",
                  "-e", f"SPATIALFORGE_LEASE_NAME={lease}", "-e", f"SPATIALFORGE_HEALTH_PORT={port}",
                  "-e", "SPATIALFORGE_METRICS_PORT=0", f"spatialforge/operator:{TAG}")
    assert proc.returncode == 0, proc.stderr
    _wait_200(f"http://127.0.0.1:{port}/healthz", name)
    held = cluster.get("lease", lease, namespace)
    assert held["spec"]["holderIdentity"] == "someone-else"


def test_front_end_answers_health_and_readiness(images, make_settings, container, kubeconfig: Path) -> None:
    """The hardened front end on the real Redis, MinIO and plane: /health and /readyz answer 200."""
    settings = make_settings()
    env = {"SPATIALFORGE_API_SECRET_KEY": settings.secret_key.get_secret_value(),
           "SPATIALFORGE_API_REDIS_URL": settings.redis_url,
           "SPATIALFORGE_API_S3_ENDPOINT": settings.s3_endpoint,
           "SPATIALFORGE_API_S3_ACCESS_KEY_ID": settings.s3_access_key_id,
           "SPATIALFORGE_API_S3_SECRET_ACCESS_KEY": settings.s3_secret_access_key.get_secret_value(),
           "SPATIALFORGE_API_BUCKET": settings.bucket,
           "SPATIALFORGE_API_STRIPE_API_KEY": settings.stripe_api_key.get_secret_value(),
           "SPATIALFORGE_API_STRIPE_WEBHOOK_SECRET": settings.stripe_webhook_secret.get_secret_value(),
           "SPATIALFORGE_API_METRICS_PORT": "0", "KUBECONFIG": "/etc/spatialforge/kubeconfig"}
    port = free_port()
    name = f"sf-apiserver-{uuid.uuid4().hex[:8]}"
    container.append(name)
    env_args = [a for k, v in env.items() for a in ("-e", f"{k}={v}")]
    info = json.loads(docker("image", "inspect", f"spatialforge/apiserver:{TAG}").stdout)[0]["Config"]
    cmd = [a if not a.startswith("--port=") else f"--port={port}" for a in info["Cmd"]]
    cmd = [a if a != "--host=0.0.0.0" else "--host=127.0.0.1" for a in cmd]
    proc = docker("run", "-d", "--name", name, "--network", "host", *HARDENED,
                  "-v", f"{kubeconfig}:/etc/spatialforge/kubeconfig:ro", *env_args, f"spatialforge/apiserver:{TAG}", *cmd)
    assert proc.returncode == 0, proc.stderr
    _wait_200(f"http://127.0.0.1:{port}/health", name)
    _wait_200(f"http://127.0.0.1:{port}/readyz", name)


def test_front_end_refuses_default_secrets_in_one_line(images) -> None:
    proc = docker("run", "--rm", *HARDENED, f"spatialforge/apiserver:{TAG}")
    assert proc.returncode != 0
    assert "refusing to start" in proc.stderr and "Traceback" not in proc.stderr, proc.stderr[-2000:]


def _wait_200(url: str, name: str) -> None:
    deadline = time.monotonic() + MEDIUM
    last: object = None
    while time.monotonic() < deadline:
        try:
            last = httpx.get(url, timeout=2)
            if last.status_code == 200:
                return
        except httpx.HTTPError as exc:
            last = exc
        running = docker("inspect", "-f", "{{.State.Running}}", name).stdout.strip()
        if running != "true":
            break
        time.sleep(0.3)
    logs = docker("logs", name)
    raise AssertionError(f"{url}: {getattr(last, 'status_code', last)}\n{logs.stdout[-2000:]}{logs.stderr[-2000:]}")
