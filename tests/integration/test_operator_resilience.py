"""Restarts and fail-over: nothing lost, nothing duplicated, a standby takes over."""

from __future__ import annotations

import json
import time
import urllib.request
from collections import Counter

import pytest
import yaml

from spatialforge.crds.constants import LABEL_NAME, LABEL_UID
from tests import timeouts
from tests.cluster import STATE, Cluster, wait_for
from tests.conftest import Behaviour
from tests.factories import depth_batch, reconstruction_job
from tests.integration.test_operator_lifecycle import wait_phase
from tests.operator_process import OperatorProcess

pytestmark = [pytest.mark.integration, pytest.mark.slow]


def role(op: OperatorProcess) -> str | None:
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{op.health_port}/healthz", timeout=2) as resp:
            return json.loads(resp.read())["role"]
    except OSError:
        return None


def test_restarts_during_fifty_resources_lose_and_duplicate_nothing(
        cluster: Cluster, operator: OperatorProcess, namespace: str, behaviour: Behaviour) -> None:
    behaviour.set(namespace, seconds=2)
    names = [f"chaos-{i:02d}" for i in range(50)]
    docs = [depth_batch(n, gpus=0) if i % 2 else reconstruction_job(n, gpus=0) for i, n in enumerate(names)]
    batches = [docs[i::5] for i in range(5)]
    for batch in batches:
        cluster.kubectl("apply", "-n", namespace, "-f", "-", input=yaml.safe_dump_all(batch))
        time.sleep(1.0)
        operator.kill()
        operator.start()

    def all_done() -> bool:
        items = cluster.list("depthbatches", namespace) + cluster.list("reconstructionjobs", namespace)
        return len(items) == 50 and all((i.get("status") or {}).get("phase") == "Succeeded" for i in items)

    wait_for("all 50 resources to succeed across 5 restarts", all_done, timeouts.LONG, interval=1.0)
    jobs = cluster.list("jobs", namespace)
    per_resource = Counter(j["metadata"]["labels"][LABEL_NAME] for j in jobs)
    assert sorted(per_resource) == sorted(names), "lost resources"
    assert set(per_resource.values()) == {1}, f"duplicate Jobs: {[n for n, c in per_resource.items() if c > 1]}"
    assert len({j["metadata"]["labels"][LABEL_UID] for j in jobs}) == 50


def test_standby_takes_over_when_the_leader_dies(cluster: Cluster, operator: OperatorProcess, namespace: str) -> None:
    wait_for("the session operator to lead", lambda: role(operator) == "leader", timeouts.MEDIUM)
    standby = OperatorProcess(cluster.kubeconfig, STATE / "logs", name="standby-operator")
    standby.start()
    try:
        wait_for("the standby to report standby", lambda: role(standby) == "standby", timeouts.SHORT)
        operator.kill()
        killed = time.monotonic()
        wait_for("the standby to lead", lambda: role(standby) == "leader", timeouts.MEDIUM)
        takeover = time.monotonic() - killed
        cluster.apply(depth_batch("after-failover"), namespace)
        wait_phase(cluster, "depthbatch", "after-failover", namespace, "Succeeded")
        # Lease duration in tests is 6 s: the standby must not wait much longer than that.
        assert takeover < 6 * 2 + 2, f"take-over took {takeover:.1f}s"
    finally:
        standby.stop()
        operator.start()
        wait_for("the session operator to lead again", lambda: role(operator) == "leader", timeouts.MEDIUM)


def test_metrics_endpoint(cluster: Cluster, operator: OperatorProcess, namespace: str) -> None:
    wait_for("the session operator to lead", lambda: role(operator) == "leader", timeouts.MEDIUM)
    cluster.apply(depth_batch("measured"), namespace)
    wait_phase(cluster, "depthbatch", "measured", namespace, "Succeeded")

    def scrape() -> str | None:
        with urllib.request.urlopen(f"http://127.0.0.1:{operator.metrics_port}/metrics", timeout=5) as resp:
            text = resp.read().decode()
        return text if "spatialforge_operator_admission_latency_seconds_count" in text else None

    text = wait_for("operator metrics", scrape, timeouts.SHORT)
    for name in ("spatialforge_operator_reconcile_seconds", "spatialforge_operator_queue_depth",
                 "spatialforge_operator_resources", "spatialforge_operator_leader 1.0"):
        assert name in text
