"""Fixtures for the chart, image and operations tests.

helm is built by `bash hack/build-tools.sh helm` into the same cache as the control plane; a
missing helm fails the test with that instruction (it never skips). Tests that need the API
server use the session `cluster` fixture of tests/conftest.py.
"""

from __future__ import annotations

import json
import os
import subprocess
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

from spatialforge.devcluster.plane import REPO, Cluster

CHART = REPO / "charts" / "spatialforge"
CI_VALUES = sorted((CHART / "ci").glob("*-values.yaml"))
# Namespaces on the plane get a per-session suffix: a namespace deleted by an earlier run may
# still be terminating, and nothing can be created in it.
SUFFIX = uuid.uuid4().hex[:5]
KUBE_VERSION_FOR_TEMPLATE = "1.36.3"  # what `helm template` assumes; the plane's version (hack/lib.sh)


def helm_version() -> str:
    for line in (REPO / "hack" / "lib.sh").read_text().splitlines():
        if line.startswith("HELM_VERSION="):
            return line.split(":-", 1)[1].rstrip('}"')
    raise RuntimeError("HELM_VERSION not found in hack/lib.sh")


def ns(base: str) -> str:
    return f"{base}-{SUFFIX}"


def tenants_args(*names: str) -> list[str]:
    """helm args that replace ci/full-values.yaml's runner.tenantNamespaces."""
    return ["--set-json", "runner.tenantNamespaces=" + json.dumps(list(names))]


def helm_path() -> Path:
    cache = Path(os.environ.get("SPATIALFORGE_CACHE", Path.home() / ".cache" / "spatialforge"))
    return cache / "bin" / f"helm-{helm_version()}" / "helm"


class Helm:
    """Runs the pinned helm; `kubeconfig` set means it talks to the local plane."""

    def __init__(self, path: Path, kubeconfig: Path | None = None) -> None:
        self.path, self.kubeconfig = path, kubeconfig

    def run(self, *args: str, check: bool = True, timeout: float = 120) -> subprocess.CompletedProcess[str]:
        env = {**os.environ, "HELM_CACHE_HOME": "/tmp/sf-helm/cache", "HELM_CONFIG_HOME": "/tmp/sf-helm/config",
               "HELM_DATA_HOME": "/tmp/sf-helm/data"}
        if self.kubeconfig is not None:
            env["KUBECONFIG"] = str(self.kubeconfig)
        proc = subprocess.run([str(self.path), *args], capture_output=True, text=True, env=env, timeout=timeout)
        if check and proc.returncode != 0:
            raise AssertionError(f"helm {' '.join(args)} failed ({proc.returncode}):\n{proc.stderr.strip()}")
        return proc

    def template(self, *args: str, namespace: str = "spatialforge-system", release: str = "sf",
                 check: bool = True) -> subprocess.CompletedProcess[str]:
        return self.run("template", release, str(CHART), "--namespace", namespace,
                        "--kube-version", KUBE_VERSION_FOR_TEMPLATE, *args, check=check)

    def render(self, *args: str, namespace: str = "spatialforge-system", release: str = "sf") -> list[dict[str, Any]]:
        """Rendered objects (test hooks included), as dicts."""
        out = self.template(*args, namespace=namespace, release=release).stdout
        return [d for d in yaml.safe_load_all(out) if d]


@pytest.fixture(scope="session")
def helm() -> Helm:
    path = helm_path()
    if not path.exists():
        pytest.fail(f"helm is missing at {path}. Build it (Go module proxy, cached like the control plane) with: "
                    "bash hack/build-tools.sh helm", pytrace=False)
    return Helm(path)


@pytest.fixture(scope="session")
def helm_live(helm: Helm, cluster: Cluster) -> Helm:
    return Helm(helm.path, cluster.kubeconfig)


@pytest.fixture(scope="session")
def default_objects(helm: Helm) -> list[dict[str, Any]]:
    return helm.render()


@pytest.fixture(scope="session")
def full_objects(helm: Helm) -> list[dict[str, Any]]:
    return helm.render("-f", str(CHART / "ci" / "full-values.yaml"))


def find(objects: list[dict[str, Any]], kind: str, name_suffix: str = "") -> dict[str, Any]:
    hits = [o for o in objects if o["kind"] == kind and o["metadata"]["name"].endswith(name_suffix)]
    assert len(hits) == 1, f"expected one {kind} *{name_suffix}, got {[o['metadata']['name'] for o in hits]}"
    return hits[0]


def pod_spec(obj: dict[str, Any]) -> dict[str, Any] | None:
    if obj["kind"] == "Pod":
        return obj["spec"]
    if obj["kind"] in ("Deployment", "StatefulSet", "DaemonSet", "Job"):
        return obj["spec"]["template"]["spec"]
    return None


@pytest.fixture
def namespaces(cluster: Cluster) -> Iterator[Callable[..., None]]:
    """Create namespaces for one test; deleted afterwards."""
    made: list[str] = []

    def make(*names: str) -> None:
        for n in names:
            cluster.apply({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": n}})
            made.append(n)

    yield make
    if made:
        cluster.kubectl("delete", "namespace", *made, "--wait=false", "--ignore-not-found", check=False)
