"""hack/cluster.sh on its own: a second, isolated plane comes up, `up` again is a no-op,
and `down` leaves no process behind."""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

import pytest

from tests.cluster import REPO
from tests.operator_process import free_port

pytestmark = pytest.mark.integration


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
    finally:
        down = run("down")
    assert down.returncode == 0, down.stderr
    assert processes_under(state) == []
    assert run("status").returncode != 0


def test_unknown_command_is_refused() -> None:
    proc = subprocess.run(["bash", str(REPO / "hack" / "cluster.sh"), "sideways"], capture_output=True, text=True)
    assert proc.returncode == 2 and "usage" in proc.stderr


def test_a_version_that_cannot_be_built_fails_clearly(tmp_path: Path) -> None:
    env = {**os.environ, "SPATIALFORGE_CACHE": str(tmp_path / "cache"), "KUBE_VERSION": "v1.99.99"}
    proc = subprocess.run(["bash", str(REPO / "hack" / "build-tools.sh"), "kube"], env=env,
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode != 0
    assert "ERROR: k8s.io/kubernetes v1.99.99 cannot be fetched from the Go module proxy" in proc.stderr
