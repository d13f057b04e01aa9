"""The local control plane (hack/cluster.sh) for tests and benches: start it, reach it with kubectl.

Only from a source checkout (an editable install): the scripts and generated CRDs it applies
live beside the package, in hack/ and crds/.
"""

from __future__ import annotations

import json
import os
import subprocess
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

import yaml

REPO = Path(__file__).resolve().parents[2]  # spatialforge/devcluster/plane.py -> the checkout
# The test session's own plane: its own state directory and ports (hack/cluster.sh with
# SF_PORTS=free), so a developer's plane in .local/ (`make demo`, `make cluster-up`) and the
# operator running against it never meet the tests. SPATIALFORGE_TEST_STATE moves it, e.g. to
# run two sessions side by side.
STATE = Path(os.environ.get("SPATIALFORGE_TEST_STATE", REPO / ".local" / "test"))


def isolate_environment() -> None:
    """Point every script and subprocess of this session at the session's own plane."""
    os.environ["SPATIALFORGE_STATE"] = str(STATE)
    os.environ["SF_PORTS"] = "free"
    os.environ["KUBECONFIG"] = str(STATE / "kubeconfig")


T = TypeVar("T")


class HowToGetIt(RuntimeError):
    """A server the tests need is missing; the message says how to get it."""


@dataclass
class Cluster:
    kubeconfig: Path
    kubectl_path: Path

    def kubectl(self, *args: str, input: str | None = None, check: bool = True) -> subprocess.CompletedProcess[str]:
        proc = subprocess.run([str(self.kubectl_path), "--kubeconfig", str(self.kubeconfig), *args],
                              input=input, capture_output=True, text=True, timeout=60)
        if check and proc.returncode != 0:
            raise AssertionError(f"kubectl {' '.join(args)} failed: {proc.stderr.strip()}")
        return proc

    def apply(self, manifest: dict[str, Any] | str, namespace: str | None = None) -> None:
        text = manifest if isinstance(manifest, str) else yaml.safe_dump(manifest)
        args = ["apply", "-f", "-"] + (["-n", namespace] if namespace else [])
        self.kubectl(*args, input=text)

    def get(self, kind: str, name: str, namespace: str) -> dict[str, Any] | None:
        proc = self.kubectl("get", kind, name, "-n", namespace, "-o", "json", check=False)
        if proc.returncode != 0:
            if "NotFound" in proc.stderr or "not found" in proc.stderr:
                return None
            raise AssertionError(proc.stderr)
        return json.loads(proc.stdout)

    def list(self, kind: str, namespace: str, selector: str | None = None) -> list[dict[str, Any]]:
        args = ["get", kind, "-n", namespace, "-o", "json"] + (["-l", selector] if selector else [])
        return json.loads(self.kubectl(*args).stdout)["items"]


def wait_for(what: str, probe: Callable[[], T | None], timeout: float, interval: float = 0.25) -> T:
    """Poll `probe` until it returns something truthy; fail with `what` after `timeout`."""
    deadline = time.monotonic() + timeout
    last: Any = None
    while time.monotonic() < deadline:
        last = probe()
        if last:
            return last
        time.sleep(interval)
    raise AssertionError(f"timed out after {timeout:.0f}s waiting for {what} (last: {last!r})")


def kube_version() -> str:
    lib = (REPO / "hack" / "lib.sh").read_text()
    for line in lib.splitlines():
        if line.startswith("KUBE_VERSION="):
            return line.split(":-", 1)[1].rstrip('}"')
    raise RuntimeError("KUBE_VERSION not found in hack/lib.sh")


SYSTEM_NAMESPACE = "spatialforge-system"
BEHAVIOUR_NAMESPACE = "spatialforge-devcluster"
CRD_FILES = ("spatialforge.io_depthbatches.yaml", "spatialforge.io_reconstructionjobs.yaml",
             "spatialforge.io_depthpools.yaml")


def plane_env() -> dict[str, str]:
    """The environment hack/cluster.sh needs to act on this session's own plane."""
    return {**os.environ, "SPATIALFORGE_STATE": str(STATE), "SF_PORTS": "free",
            "SF_BUILD_OK": os.environ.get("SF_BUILD_OK", "1")}


def start_cluster() -> tuple[Cluster, bool]:
    """Start the session's plane via hack/cluster.sh unless it already runs, with the CRDs and the
    system namespaces in place (tests and benches alike); return (cluster, started_here)."""
    script = REPO / "hack" / "cluster.sh"
    status = subprocess.run(["bash", str(script), "status"], capture_output=True, text=True, env=plane_env())
    started = False
    if status.returncode != 0:
        up = subprocess.run(["bash", str(script), "up"], capture_output=True, text=True, env=plane_env())
        if up.returncode != 0:
            raise HowToGetIt(
                "the local control plane did not start. Build and start it with `make cluster-up` "
                f"(hack/cluster.sh up). Its output:\n{up.stderr[-3000:]}")
        started = True
    cache = Path(os.environ.get("SPATIALFORGE_CACHE", Path.home() / ".cache" / "spatialforge"))
    kubectl = cache / "bin" / f"kube-{kube_version()}" / "kubectl"
    plane = Cluster(STATE / "kubeconfig", kubectl)
    prepare(plane)
    return plane, started


def prepare(plane: Cluster) -> None:
    """Install the generated CRDs and create the namespaces the operator and node agent use."""
    files = [arg for name in CRD_FILES for arg in ("-f", str(REPO / "crds" / name))]
    plane.kubectl("apply", "--server-side", "--force-conflicts", *files)
    plane.kubectl("wait", "--for=condition=Established", "crd/depthbatches.spatialforge.io",
                  "crd/reconstructionjobs.spatialforge.io", "crd/depthpools.spatialforge.io", "--timeout=30s")
    # The runner-status admission policy, as hack/cluster.sh up applies it (a plane started
    # before it existed gets it too).
    plane.kubectl("apply", "--server-side", "--force-conflicts", "-f", str(REPO / "crds" / "policies"))
    for ns in (SYSTEM_NAMESPACE, BEHAVIOUR_NAMESPACE):
        plane.apply({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": ns}})


def stop_cluster() -> None:
    subprocess.run(["bash", str(REPO / "hack" / "cluster.sh"), "down"], capture_output=True, text=True,
                   env=plane_env())
