"""GPU quotas: per-namespace limits, the global budget, priority order, queue position."""

from __future__ import annotations

import datetime as dt
import json

import pytest

from tests import timeouts
from tests.cluster import Cluster, wait_for
from tests.conftest import SYSTEM_NAMESPACE, Behaviour
from tests.factories import depth_batch
from tests.integration.test_operator_lifecycle import status, wait_phase
from tests.operator_process import OperatorProcess

pytestmark = pytest.mark.integration


def set_namespace_limit(cluster: Cluster, namespace: str, gpus: int | None) -> None:
    value = "null" if gpus is None else json.dumps(str(gpus))
    cluster.kubectl("patch", "namespace", namespace, "--type=merge",
                    "-p", f'{{"metadata":{{"annotations":{{"spatialforge.io/gpu-limit":{value}}}}}}}')


def started(cluster: Cluster, name: str, ns: str) -> dt.datetime:
    return dt.datetime.fromisoformat(status(cluster, "depthbatch", name, ns)["startTime"].replace("Z", "+00:00"))


def test_namespace_limit_queues_and_priority_orders(cluster: Cluster, operator: OperatorProcess,
                                                    namespace: str, behaviour: Behaviour) -> None:
    set_namespace_limit(cluster, namespace, 1)
    behaviour.set(namespace, seconds=2)
    behaviour.set(f"{namespace}_first", seconds=8)
    cluster.apply(depth_batch("first"), namespace)
    wait_for("first to hold the GPU", lambda: status(cluster, "depthbatch", "first", namespace).get("jobName"), timeouts.SHORT)
    cluster.apply(depth_batch("low"), namespace)
    cluster.apply(depth_batch("high", priority=10), namespace)
    low = wait_phase(cluster, "depthbatch", "low", namespace, "Queued", timeouts.SHORT)
    high = wait_for("high to be first in the queue",
                    lambda: (s := status(cluster, "depthbatch", "high", namespace)).get("queuePosition") == 1 and s,
                    timeouts.SHORT)
    low = wait_for("low to be second", lambda: (s := status(cluster, "depthbatch", "low", namespace)).get("queuePosition") == 2 and s,
                   timeouts.SHORT)
    assert low["reason"] == "QuotaExceeded" and f"namespace {namespace}" in low["message"]
    assert high["estimatedStartTime"] and low["estimatedStartTime"] >= high["estimatedStartTime"]
    for name in ("first", "high", "low"):
        wait_phase(cluster, "depthbatch", name, namespace, "Succeeded", timeouts.LONG)
    assert started(cluster, "first", namespace) <= started(cluster, "high", namespace) <= started(cluster, "low", namespace)
    # Never more than one at a time under a limit of one GPU.
    runs = sorted((started(cluster, n, namespace),
                   dt.datetime.fromisoformat(status(cluster, "depthbatch", n, namespace)["completionTime"].replace("Z", "+00:00")))
                  for n in ("first", "high", "low"))
    assert all(a[1] <= b[0] for a, b in zip(runs, runs[1:]))


def test_other_tenants_are_not_held_back(cluster: Cluster, operator: OperatorProcess, namespace: str,
                                         behaviour: Behaviour) -> None:
    set_namespace_limit(cluster, namespace, 0)
    cluster.apply(depth_batch("blocked"), namespace)
    st = wait_phase(cluster, "depthbatch", "blocked", namespace, "Queued", timeouts.SHORT)
    assert "at most 0" in st["message"]
    other = f"{namespace}-b"
    cluster.apply({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": other}})
    try:
        cluster.apply(depth_batch("free"), other)
        wait_phase(cluster, "depthbatch", "free", other, "Succeeded")
        set_namespace_limit(cluster, namespace, None)
        wait_phase(cluster, "depthbatch", "blocked", namespace, "Succeeded")
    finally:
        cluster.kubectl("delete", "namespace", other, "--wait=false", check=False)


def test_global_budget_from_the_quota_configmap(cluster: Cluster, operator: OperatorProcess, namespace: str,
                                                behaviour: Behaviour) -> None:
    cm = {"apiVersion": "v1", "kind": "ConfigMap",
          "metadata": {"name": "spatialforge-quotas", "namespace": SYSTEM_NAMESPACE}, "data": {"gpuBudget": "2"}}
    cluster.apply(cm)
    behaviour.set(namespace, seconds=4)
    try:
        cluster.apply(depth_batch("wide", gpus=2), namespace)
        wait_phase(cluster, "depthbatch", "wide", namespace, "Running", timeouts.SHORT)
        cluster.apply(depth_batch("narrow", gpus=1), namespace)
        st = wait_phase(cluster, "depthbatch", "narrow", namespace, "Queued", timeouts.SHORT)
        assert "cluster uses 2 of 2 GPUs" in st["message"] and st["queuePosition"] == 1
        wait_phase(cluster, "depthbatch", "narrow", namespace, "Succeeded", timeouts.MEDIUM)
    finally:
        cluster.kubectl("delete", "configmap", "spatialforge-quotas", "-n", SYSTEM_NAMESPACE, check=False)
