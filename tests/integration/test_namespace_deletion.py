"""Deleting a tenant namespace with running work finishes quickly and leaves nothing behind:
the node agent finishes deleted pods as a kubelet does (container terminated, terminal phase,
then deleted with grace 0), so the Job controller drops its tracking finalizer."""

from __future__ import annotations

import time

import pytest

from spatialforge.devcluster.operator_process import OperatorProcess
from spatialforge.devcluster.plane import Cluster, wait_for
from tests import timeouts
from tests.conftest import Behaviour
from tests.factories import depth_batch

pytestmark = pytest.mark.integration
RESOURCES = 20
NAMESPACE_GONE_WITHIN = 60.0  # the requirement (issue 10, section 3), not a measurement


def test_namespace_with_running_resources_goes_within_a_minute(cluster: Cluster, operator: OperatorProcess,
                                                               namespace: str, behaviour: Behaviour) -> None:
    behaviour.set(namespace, seconds=600)  # every pod would run for ten minutes
    for i in range(RESOURCES):
        cluster.apply(depth_batch(f"busy-{i:02d}", gpus=0), namespace)

    def all_running() -> bool:
        pods = cluster.list("pods", namespace)
        return len(pods) == RESOURCES and all(p.get("status", {}).get("phase") == "Running" for p in pods)
    wait_for(f"{RESOURCES} runner pods Running", all_running, timeouts.LONG)
    assert all(p["metadata"].get("finalizers") == ["batch.kubernetes.io/job-tracking"]
               for p in cluster.list("pods", namespace)), "the Job controller tracks its pods with a finalizer"

    started = time.monotonic()
    cluster.kubectl("delete", "namespace", namespace, "--wait=false")

    def gone() -> bool:
        proc = cluster.kubectl("get", "namespace", namespace, "-o", "name", check=False)
        return proc.returncode != 0 and "NotFound" in proc.stderr
    try:
        wait_for(f"namespace {namespace} to be deleted", gone, NAMESPACE_GONE_WITHIN)
    except AssertionError:
        left = cluster.kubectl("get", "pods,jobs,depthbatches", "-n", namespace, "-o", "wide", check=False).stdout
        ns = cluster.kubectl("get", "namespace", namespace, "-o", "yaml", check=False).stdout
        raise AssertionError(f"namespace still there after {NAMESPACE_GONE_WITHIN:.0f}s; left:\n{left}\n{ns}") from None
    elapsed = time.monotonic() - started
    # Nothing of it anywhere: no pod, Job or resource of that namespace survives in any listing.
    for kind in ("pods", "jobs", "depthbatches"):
        out = cluster.kubectl("get", kind, "--all-namespaces", "-o", "name",
                              f"--field-selector=metadata.namespace={namespace}").stdout
        assert not out.strip(), f"{kind} left behind: {out}"
    print(f"namespace with {RESOURCES} running resources deleted in {elapsed:.1f}s")
