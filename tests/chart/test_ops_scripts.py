"""The operations scripts the runbook relies on, run for real."""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

import pytest

from spatialforge.devcluster.plane import REPO, Cluster

HACK = REPO / "hack"


def _run(*args: str, env: dict[str, str] | None = None, timeout: float = 120) -> subprocess.CompletedProcess[str]:
    return subprocess.run(["bash", *args], capture_output=True, text=True, timeout=timeout,
                          env={**os.environ, **(env or {})}, cwd=REPO)


def test_redis_backup_wipe_restore_loses_nothing() -> None:
    """hack/redis-backup.sh selftest: seeds every key type (with TTLs and binary keys) into a
    fresh local redis-server, backs up, stops it and deletes its data, starts an empty one,
    restores, and verifies every key against the backup."""
    if not Path(os.environ.get("REDIS_SERVER", "/usr/bin/redis-server")).exists():
        pytest.fail("redis-server is missing: apt-get install redis-server (hack/install.sh does)", pytrace=False)
    proc = _run(str(HACK / "redis-backup.sh"), "selftest")
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "selftest passed" in proc.stderr
    assert "restored 507 keys" in proc.stderr and proc.stderr.count("verified 507 keys") == 2


def test_kind_e2e_refuses_without_docker() -> None:
    """No Docker engine here: the script must say so and fail, never pretend."""
    if shutil.which("docker") and subprocess.run(["docker", "info"], capture_output=True).returncode == 0:
        pytest.fail("a Docker engine answers on this machine: run hack/kind-e2e.sh itself instead", pytrace=False)
    proc = _run(str(HACK / "kind-e2e.sh"))
    assert proc.returncode == 2, proc.stderr
    assert "Docker" in proc.stderr and "Nothing was run" in proc.stderr


@pytest.mark.integration
def test_crds_upgrade_applies_and_checks(cluster: Cluster) -> None:
    env = {"KUBECONFIG": str(cluster.kubeconfig), "KUBECTL": str(cluster.kubectl_path)}
    up = _run(str(HACK / "crds-upgrade.sh"), env=env)
    assert up.returncode == 0, up.stderr
    crds = sorted((REPO / "charts" / "spatialforge" / "crds").glob("*.yaml"))
    assert len(crds) >= 3, crds  # DepthBatch, ReconstructionJob, DepthPool
    assert up.stderr.count("established; stored versions: v1alpha1") == len(crds)
    check = _run(str(HACK / "crds-upgrade.sh"), "--check", env=env)
    assert check.returncode == 0 and "up to date" in check.stderr, check.stderr + check.stdout
