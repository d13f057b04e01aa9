"""Restarts and fail-over: nothing lost, nothing duplicated, a standby takes over."""

from __future__ import annotations

import datetime as dt
import json
import urllib.request
from collections import Counter

import pytest
import yaml
from prometheus_client.parser import text_string_to_metric_families

from spatialforge.crds.constants import LABEL_NAME, LABEL_UID
from spatialforge.devcluster.operator_process import OperatorProcess
from spatialforge.devcluster.plane import STATE, Cluster, wait_for
from tests import timeouts
from tests.conftest import SYSTEM_NAMESPACE, Behaviour
from tests.factories import depth_batch, reconstruction_job
from tests.integration.test_operator_lifecycle import wait_phase

pytestmark = [pytest.mark.integration, pytest.mark.slow]


def role(op: OperatorProcess) -> str | None:
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{op.health_port}/healthz", timeout=2) as resp:
            return json.loads(resp.read())["role"]
    except OSError:
        return None


def jobs_by_resource(cluster: Cluster, namespace: str) -> dict[str, str]:
    return {j["metadata"]["labels"][LABEL_NAME]: j["metadata"]["uid"] for j in cluster.list("jobs", namespace)}


def test_restarts_during_fifty_resources_lose_and_duplicate_nothing(
        cluster: Cluster, operator: OperatorProcess, namespace: str, behaviour: Behaviour) -> None:
    behaviour.set(namespace, seconds=2)
    names = [f"chaos-{i:02d}" for i in range(50)]
    docs = [depth_batch(n, gpus=0) if i % 2 else reconstruction_job(n, gpus=0) for i, n in enumerate(names)]
    batches = [docs[i::5] for i in range(5)]
    first_uid: dict[str, str] = {}
    try:
        for batch in batches:
            cluster.kubectl("apply", "-n", namespace, "-f", "-", input=yaml.safe_dump_all(batch))
            # Kill once this batch has started getting Jobs: mid-admission, not between batches.
            wait_for("a Job of this batch", lambda b=batch: any(
                d["metadata"]["name"] in jobs_by_resource(cluster, namespace) for d in b), timeouts.MEDIUM)
            for name, uid in jobs_by_resource(cluster, namespace).items():
                assert first_uid.setdefault(name, uid) == uid, f"the Job of {name} was replaced"
            operator.kill()
            operator.start()
    finally:
        if not operator.alive():
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
    final_uid = jobs_by_resource(cluster, namespace)
    assert all(final_uid[n] == uid for n, uid in first_uid.items()), "a Job was replaced after a restart"
    items = cluster.list("depthbatches", namespace) + cluster.list("reconstructionjobs", namespace)
    attempts = {i["metadata"]["name"]: i["status"].get("attempts") for i in items}
    assert set(attempts.values()) == {1}, f"retried: {[n for n, a in attempts.items() if a != 1]}"


def _time(value: str) -> dt.datetime:
    return dt.datetime.fromisoformat(value)


def lease(cluster: Cluster) -> dict:
    obj = cluster.get("lease", "spatialforge-operator", SYSTEM_NAMESPACE)
    assert obj is not None
    return obj["spec"]


def test_standby_takes_over_when_the_leader_dies(cluster: Cluster, operator: OperatorProcess, namespace: str) -> None:
    wait_for("the session operator to lead", lambda: role(operator) == "leader", timeouts.MEDIUM)
    transitions = lease(cluster).get("leaseTransitions", 0)
    standby = OperatorProcess(cluster.kubeconfig, STATE / "logs", name="standby-operator")
    standby.start()
    try:
        wait_for("the standby to report standby", lambda: role(standby) == "standby", timeouts.SHORT)
        operator.kill()
        last = lease(cluster)  # the dead leader's last renewal: nobody writes the Lease until it expires
        assert last["holderIdentity"].startswith(operator.name), last
        wait_for("the standby to lead", lambda: role(standby) == "leader", timeouts.MEDIUM)
        cluster.apply(depth_batch("after-failover"), namespace)
        wait_phase(cluster, "depthbatch", "after-failover", namespace, "Succeeded")
        spec = lease(cluster)
        assert spec["holderIdentity"].startswith("standby-operator") and spec["leaseTransitions"] == transitions + 1
        # The take-over, on the Lease's own clock: not before the dead leader's lease expired
        # (no two leaders), and within one standby retry (duration/5, at least 1 s) after it,
        # plus scheduling slack on a loaded machine.
        duration = float(last["leaseDurationSeconds"])
        gap = (_time(spec["acquireTime"]) - _time(last["renewTime"])).total_seconds()
        assert duration < gap <= duration + max(1.0, duration / 5) + 2.5, \
            f"took over {gap:.2f}s after the last renewal (lease {duration:.0f}s)"
        renewed = spec["renewTime"]
        wait_for("a renewal", lambda: lease(cluster)["renewTime"] != renewed, timeouts.SHORT)
        assert lease(cluster)["leaseTransitions"] == transitions + 1, "a renewal lost leaseTransitions"
    finally:
        standby.stop()
        if not operator.alive():
            operator.start()
        wait_for("the session operator to lead again", lambda: role(operator) == "leader", timeouts.MEDIUM)


def test_a_leader_that_cannot_renew_exits(cluster: Cluster, operator: OperatorProcess) -> None:
    wait_for("the session operator to lead", lambda: role(operator) == "leader", timeouts.MEDIUM)
    # Another holder writes itself into the Lease, as a partitioned leader's successor would:
    # the session operator's next renewal finds the lease taken and must stop acting.
    body = cluster.get("lease", "spatialforge-operator", SYSTEM_NAMESPACE)
    assert body is not None
    now = dt.datetime.now(dt.UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")
    body["spec"].update(holderIdentity="intruder", renewTime=now, acquireTime=now)
    try:
        cluster.kubectl("replace", "-f", "-", input=json.dumps(body))
        wait_for("the leader to exit", lambda: not operator.alive(), timeouts.SHORT)
        assert operator.proc is not None and operator.proc.returncode == 1
        assert "lost the leader lease" in operator.log_tail()
    finally:
        if not operator.alive():
            operator.start()
        wait_for("the session operator to lead again", lambda: role(operator) == "leader", timeouts.MEDIUM)


def metric(text: str, name: str, **labels: str) -> float:
    """The value of one sample in Prometheus text format (0 when absent)."""
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            if sample.name == name and all(sample.labels.get(k) == v for k, v in labels.items()):
                return sample.value
    return 0.0


def test_metrics_endpoint(cluster: Cluster, operator: OperatorProcess, namespace: str) -> None:
    wait_for("the session operator to lead", lambda: role(operator) == "leader", timeouts.MEDIUM)

    def scrape() -> str:
        with urllib.request.urlopen(f"http://127.0.0.1:{operator.metrics_port}/metrics", timeout=5) as resp:
            return resp.read().decode()

    # The counters are cumulative over the process (earlier tests ran work through it): deltas.
    names = ("spatialforge_operator_admissions_total", "spatialforge_operator_admission_latency_seconds_count",
             "spatialforge_operator_reconcile_seconds_count")
    succeeded = {"name": "spatialforge_operator_phase_transitions_total", "kind": "DepthBatch", "phase": "Succeeded"}
    before_text = scrape()
    before = {n: metric(before_text, n) for n in names}
    succeeded_before = metric(before_text, **succeeded)
    cluster.apply(depth_batch("measured"), namespace)
    wait_phase(cluster, "depthbatch", "measured", namespace, "Succeeded")

    def counted() -> str | None:
        text = scrape()
        return text if metric(text, **succeeded) > succeeded_before else None

    text = wait_for("the Succeeded transition in the operator's metrics", counted, timeouts.SHORT)
    assert metric(text, **succeeded) == succeeded_before + 1
    assert metric(text, "spatialforge_operator_admissions_total") == before["spatialforge_operator_admissions_total"] + 1
    for n in names[1:]:
        assert metric(text, n) >= before[n] + 1, n
    assert metric(text, "spatialforge_operator_leader") == 1
