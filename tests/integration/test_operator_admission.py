"""GPU quotas: per-namespace limits, the global budget, queueing strategies, priority order.

Resources that hold GPUs here run until the test deletes them, so every "still queued" check
looks at a state nothing can change, instead of a time window on a loaded machine.
"""

from __future__ import annotations

import json
from collections.abc import Iterator

import pytest

from spatialforge.devcluster.operator_process import OperatorProcess
from spatialforge.devcluster.plane import Cluster, wait_for
from tests import timeouts
from tests.conftest import SYSTEM_NAMESPACE, Behaviour
from tests.factories import depth_batch
from tests.integration.test_operator_lifecycle import status, wait_phase

pytestmark = pytest.mark.integration
QUOTAS = "spatialforge-quotas"


def set_namespace_limit(cluster: Cluster, namespace: str, gpus: int | None) -> None:
    value = "null" if gpus is None else json.dumps(str(gpus))
    cluster.kubectl("patch", "namespace", namespace, "--type=merge",
                    "-p", f'{{"metadata":{{"annotations":{{"spatialforge.io/gpu-limit":{value}}}}}}}')


def set_quota(cluster: Cluster, **data: str) -> None:
    """Create the quota ConfigMap, or replace its data in one write: deleting it first would mean
    "unlimited" for a moment, and the operator could admit work in that gap."""
    if cluster.get("configmap", QUOTAS, SYSTEM_NAMESPACE) is None:
        cluster.apply({"apiVersion": "v1", "kind": "ConfigMap",
                       "metadata": {"name": QUOTAS, "namespace": SYSTEM_NAMESPACE}, "data": data})
        return
    patch = [{"op": "add", "path": "/data", "value": data}]  # "add" replaces an existing member
    cluster.kubectl("patch", "configmap", QUOTAS, "-n", SYSTEM_NAMESPACE, "--type=json", "-p", json.dumps(patch))


@pytest.fixture
def quota(cluster: Cluster) -> Iterator[None]:
    """The test sets the quota ConfigMap; it is removed afterwards (unlimited again)."""
    yield
    cluster.kubectl("delete", "configmap", QUOTAS, "-n", SYSTEM_NAMESPACE, "--ignore-not-found")


def hold(cluster: Cluster, behaviour: Behaviour, namespace: str, name: str, gpus: int) -> None:
    """A resource that runs (and holds its GPUs) until deleted."""
    behaviour.set(f"{namespace}_{name}", seconds=3600)
    cluster.apply(depth_batch(name, gpus=gpus), namespace)
    wait_phase(cluster, "depthbatch", name, namespace, "Running", timeouts.MEDIUM)


def release(cluster: Cluster, namespace: str, name: str) -> None:
    cluster.kubectl("delete", "depthbatch", name, "-n", namespace, "--wait=true", "--timeout=30s")


def queued_at(cluster: Cluster, name: str, ns: str, position: int) -> dict:
    return wait_for(f"{name} to be queued at {position}",
                    lambda: (s := status(cluster, "depthbatch", name, ns)).get("phase") == "Queued"
                    and s.get("queuePosition") == position and s, timeouts.SHORT)


def test_namespace_limit_queues_and_priority_orders(cluster: Cluster, operator: OperatorProcess,
                                                    namespace: str, behaviour: Behaviour) -> None:
    set_namespace_limit(cluster, namespace, 1)
    hold(cluster, behaviour, namespace, "first", 1)
    behaviour.set(f"{namespace}_low", seconds=0.5)
    cluster.apply(depth_batch("low"), namespace)
    queued_at(cluster, "low", namespace, 1)
    behaviour.set(f"{namespace}_high", seconds=3600)
    cluster.apply(depth_batch("high", priority=10), namespace)
    high = queued_at(cluster, "high", namespace, 1)
    low = queued_at(cluster, "low", namespace, 2)
    assert low["reason"] == "QuotaExceeded" and f"namespace {namespace}" in low["message"]
    assert high["estimatedStartTime"] and low["estimatedStartTime"] >= high["estimatedStartTime"]
    release(cluster, namespace, "first")
    wait_phase(cluster, "depthbatch", "high", namespace, "Running")
    assert queued_at(cluster, "low", namespace, 1)["reason"] == "QuotaExceeded"  # one GPU: high holds it
    release(cluster, namespace, "high")
    wait_phase(cluster, "depthbatch", "low", namespace, "Succeeded")


def test_other_tenants_are_not_held_back(cluster: Cluster, operator: OperatorProcess, namespace: str,
                                         behaviour: Behaviour) -> None:
    set_namespace_limit(cluster, namespace, 1)
    hold(cluster, behaviour, namespace, "holder", 1)
    cluster.apply(depth_batch("blocked"), namespace)
    queued_at(cluster, "blocked", namespace, 1)
    other = f"{namespace}-b"
    cluster.apply({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": other}})
    try:
        cluster.apply(depth_batch("free"), other)
        wait_phase(cluster, "depthbatch", "free", other, "Succeeded")
        set_namespace_limit(cluster, namespace, None)
        wait_phase(cluster, "depthbatch", "blocked", namespace, "Succeeded")
    finally:
        cluster.kubectl("delete", "namespace", other, "--wait=false", check=False)


def test_more_gpus_than_a_limit_allows_fails_at_once(cluster: Cluster, operator: OperatorProcess, namespace: str,
                                                     quota: None) -> None:
    set_namespace_limit(cluster, namespace, 1)
    cluster.apply(depth_batch("too-wide", gpus=1, parallelism=2), namespace)
    st = wait_phase(cluster, "depthbatch", "too-wide", namespace, "Failed", timeouts.SHORT)
    assert st["reason"] == "ExceedsNamespaceLimit" and "at most 1" in st["message"]
    set_namespace_limit(cluster, namespace, None)
    set_quota(cluster, gpuBudget="2")
    cluster.apply(depth_batch("over-budget", gpus=3), namespace)
    st = wait_phase(cluster, "depthbatch", "over-budget", namespace, "Failed", timeouts.SHORT)
    assert st["reason"] == "ExceedsClusterBudget" and "budget is 2" in st["message"]
    assert not cluster.list("jobs", namespace)


def test_global_budget_from_the_quota_configmap(cluster: Cluster, operator: OperatorProcess, namespace: str,
                                                behaviour: Behaviour, quota: None) -> None:
    set_quota(cluster, gpuBudget="2")
    hold(cluster, behaviour, namespace, "wide", 2)
    cluster.apply(depth_batch("narrow", gpus=1), namespace)
    st = queued_at(cluster, "narrow", namespace, 1)
    assert "cluster uses 2 of 2 GPUs" in st["message"]
    release(cluster, namespace, "wide")
    wait_phase(cluster, "depthbatch", "narrow", namespace, "Succeeded", timeouts.MEDIUM)


@pytest.mark.parametrize("strategy", ["StrictFIFO", "BestEffortFIFO"])
def test_queueing_strategy(cluster: Cluster, operator: OperatorProcess, namespace: str, behaviour: Behaviour,
                           quota: None, strategy: str) -> None:
    set_quota(cluster, gpuBudget="4", queueingStrategy=strategy)
    hold(cluster, behaviour, namespace, "running", 2)
    behaviour.set(f"{namespace}_head", seconds=0.5)
    cluster.apply(depth_batch("head", gpus=4), namespace)
    queued_at(cluster, "head", namespace, 1)
    cluster.apply(depth_batch("small", gpus=1), namespace)
    if strategy == "StrictFIFO":  # the head blocks everything behind it
        st = queued_at(cluster, "small", namespace, 2)
        assert "waiting behind 1 earlier" in st["message"]
    else:  # a later resource that fits goes ahead while the head waits
        wait_phase(cluster, "depthbatch", "small", namespace, "Succeeded")
        assert status(cluster, "depthbatch", "head", namespace)["phase"] == "Queued"
    release(cluster, namespace, "running")
    wait_phase(cluster, "depthbatch", "head", namespace, "Succeeded")


def test_work_without_gpus_never_waits_for_the_budget(cluster: Cluster, operator: OperatorProcess, namespace: str,
                                                      behaviour: Behaviour, quota: None) -> None:
    set_quota(cluster, gpuBudget="1")
    hold(cluster, behaviour, namespace, "gpu-holder", 1)
    cluster.apply(depth_batch("gpu-waiter", gpus=1), namespace)
    queued_at(cluster, "gpu-waiter", namespace, 1)
    cluster.apply(depth_batch("cpu-only", gpus=0), namespace)
    wait_phase(cluster, "depthbatch", "cpu-only", namespace, "Succeeded")
    assert status(cluster, "depthbatch", "gpu-waiter", namespace)["phase"] == "Queued"


def test_quota_configmap_deleted_or_unparsable_means_unlimited(cluster: Cluster, operator: OperatorProcess,
                                                               namespace: str, behaviour: Behaviour,
                                                               quota: None) -> None:
    set_quota(cluster, gpuBudget="1")
    hold(cluster, behaviour, namespace, "holder", 1)
    cluster.apply(depth_batch("waiter"), namespace)
    queued_at(cluster, "waiter", namespace, 1)
    cluster.kubectl("delete", "configmap", QUOTAS, "-n", SYSTEM_NAMESPACE)
    wait_phase(cluster, "depthbatch", "waiter", namespace, "Succeeded")
    set_quota(cluster, gpuBudget="1")
    cluster.apply(depth_batch("waiter-2"), namespace)
    queued_at(cluster, "waiter-2", namespace, 1)
    assert status(cluster, "depthbatch", "waiter-2", namespace)["phase"] == "Queued"  # so "lots" admits it
    set_quota(cluster, gpuBudget="lots")
    wait_phase(cluster, "depthbatch", "waiter-2", namespace, "Succeeded")
    wait_for("the operator to log the unparsable value",
             lambda: "gpuBudget 'lots' is not a whole number" in operator.log_tail(200_000), timeouts.SHORT)
