"""hack/cluster.sh on its own: a second, isolated plane comes up, `up` again is a no-op,
and `down` leaves no process behind."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
from pathlib import Path

import pytest

from spatialforge.crds.policy import POLICY_NAME
from spatialforge.devcluster.ports import free_port
from spatialforge.devcluster.plane import REPO, Cluster, kube_version

pytestmark = pytest.mark.integration


def kubectl_path() -> Path:
    cache = Path(os.environ.get("SPATIALFORGE_CACHE", Path.home() / ".cache" / "spatialforge"))
    return cache / "bin" / f"kube-{kube_version()}" / "kubectl"


def processes_under(state: Path) -> list[str]:
    found = []
    for proc in Path("/proc").iterdir():
        if proc.name.isdigit():
            try:
                cmd = (proc / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
                env = (proc / "environ").read_bytes()
            except OSError:
                continue
            if str(state) in cmd or str(state).encode() in env:
                found.append(f"{proc.name}: {cmd[:120]}")
    return found


def test_up_is_idempotent_and_down_leaves_nothing(tmp_path: Path) -> None:
    state = tmp_path / "plane"
    env = {**os.environ, "SPATIALFORGE_STATE": str(state), "SF_NODES": "1",
           **{k: str(free_port()) for k in ("SF_API_PORT", "SF_ETCD_PORT", "SF_ETCD_PEER_PORT", "SF_CM_PORT", "SF_SCHED_PORT")}}
    script = str(REPO / "hack" / "cluster.sh")

    def run(*args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(["bash", script, *args], env=env, capture_output=True, text=True, timeout=180)

    try:
        first = run("up")
        assert first.returncode == 0, first.stderr
        pids = {p.name: p.read_text() for p in (state / "pids").iterdir()}
        again = run("up")
        assert again.returncode == 0, again.stderr
        assert "starting" not in again.stderr, "a second `up` restarted something"
        assert {p.name: p.read_text() for p in (state / "pids").iterdir()} == pids
        status = run("status")
        assert status.returncode == 0 and "api: ready" in status.stdout
        assert (state / "kubeconfig").is_file()
        # `up` leaves the plane ready for SpatialForge: CRDs and the runner-status policy.
        plane = Cluster(state / "kubeconfig", kubectl_path())
        names = plane.kubectl("get", "crd,validatingadmissionpolicy,validatingadmissionpolicybinding",
                              "-o", "name").stdout.split()
        assert "customresourcedefinition.apiextensions.k8s.io/depthbatches.spatialforge.io" in names
        assert f"validatingadmissionpolicy.admissionregistration.k8s.io/{POLICY_NAME}" in names
        assert f"validatingadmissionpolicybinding.admissionregistration.k8s.io/{POLICY_NAME}" in names
    finally:
        down = run("down")
    assert down.returncode == 0, down.stderr
    assert processes_under(state) == []
    assert run("status").returncode != 0


def test_unknown_command_is_refused() -> None:
    proc = subprocess.run(["bash", str(REPO / "hack" / "cluster.sh"), "sideways"], capture_output=True, text=True)
    assert proc.returncode == 2 and "usage" in proc.stderr


def _build_kube(tmp_path: Path, **env: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(["bash", str(REPO / "hack" / "build-tools.sh"), "kube"], capture_output=True, text=True,
                          timeout=300, env={**os.environ, "SPATIALFORGE_CACHE": str(tmp_path / "cache"), **env})


# What a module proxy answers for a version it does not have (proxy.golang.org: 404/410 with
# "unknown revision" or "invalid version"; some mirrors 403 "not available").
VERSION_UNKNOWN = re.compile(r"(404 Not Found|410 Gone|403 Forbidden|unknown revision|invalid version|not available)")
TRANSPORT_ERROR = re.compile(r"(dial tcp|no such host|connection refused|i/o timeout|TLS handshake)")


def test_a_version_the_proxy_lacks_fails_naming_the_version(tmp_path: Path) -> None:
    # Control: the same proxy, from an empty module cache, serves the pinned version, so the
    # failure below is about the version and not about reaching the proxy.
    from spatialforge.devcluster.plane import kube_version

    control = subprocess.run(["go", "list", "-m", "-json", f"k8s.io/kubernetes@{kube_version()}"], cwd=tmp_path,
                             capture_output=True, text=True, timeout=120,
                             env={**os.environ, "GOMODCACHE": str(tmp_path / "modcache"), "GOFLAGS": "-mod=mod"})
    assert control.returncode == 0, f"the Go module proxy does not serve the pinned Kubernetes: {control.stderr}"
    proc = _build_kube(tmp_path, KUBE_VERSION="v1.99.99")
    assert proc.returncode != 0
    line = next((ln for ln in proc.stderr.splitlines() if "ERROR:" in ln), "")
    assert "k8s.io/kubernetes v1.99.99 cannot be fetched from the Go module proxy" in line, proc.stderr
    cause = line.split("): ", 1)[1]
    assert cause.startswith("k8s.io/kubernetes@v1.99.99: ") and VERSION_UNKNOWN.search(cause), line
    assert not TRANSPORT_ERROR.search(cause), line


def test_an_unreachable_proxy_is_told_apart_from_an_unknown_version(tmp_path: Path) -> None:
    closed = free_port()  # nothing listens there
    proc = _build_kube(tmp_path, KUBE_VERSION="v1.99.98", GOPROXY=f"http://127.0.0.1:{closed}", GOMODCACHE=str(tmp_path / "m"))
    assert proc.returncode != 0
    assert f"cannot be fetched from the Go module proxy (http://127.0.0.1:{closed})" in proc.stderr
    assert "connection refused" in proc.stderr and not VERSION_UNKNOWN.search(proc.stderr), proc.stderr


def test_no_go_is_named(tmp_path: Path) -> None:
    go = shutil.which("go")
    assert go, "Go is needed for this test (it builds the plane)"
    path = os.pathsep.join(p for p in os.environ["PATH"].split(os.pathsep) if Path(p) != Path(go).parent)
    assert shutil.which("bash", path=path), "bash shares a folder with go; cannot hide go"
    proc = _build_kube(tmp_path, PATH=path)
    assert proc.returncode != 0 and "Go is required to build the control plane" in proc.stderr, proc.stderr
