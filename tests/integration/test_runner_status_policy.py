"""The runner-status ValidatingAdmissionPolicy on the real plane, with real runner credentials:
tokens of the runner ServiceAccount bound to the pods the Job controller made for the operator's
Jobs. A runner may change its own shard's progress in its own resource; nothing else."""

from __future__ import annotations

import datetime as dt
from typing import Any

import pytest

from tests import timeouts
from tests.cluster import Cluster, wait_for
from tests.conftest import Behaviour
from tests.factories import depth_batch
from tests.integration.runner_identity import bound_token, patch_status_as, unbound_token
from tests.operator_process import OperatorProcess

pytestmark = pytest.mark.integration
# Long enough that its Job's name (59 characters) is cut short in its pods' names: the Job
# controller keeps a pod's generated-name prefix `<job>-<index>-` within 58 characters.
LONG_NAME = "sibling-whose-name-is-long-enough-to-cut-pod-names"


def _shard(done: int) -> dict[str, Any]:
    now = dt.datetime.now(dt.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
    return {"done": done, "total": 10, "stage": "depth", "updatedAt": now}


def _running_pods(cluster: Cluster, namespace: str, name: str, count: int) -> tuple[str, dict[int, dict[str, Any]]]:
    """(the resource's Job name, index -> its Running pod) once the operator has started them."""
    def probe() -> tuple[str, dict[int, dict[str, Any]]] | None:
        obj = cluster.get("depthbatch", name, namespace) or {}
        job = (obj.get("status") or {}).get("jobName")
        if not job:
            return None
        pods = {int(p["metadata"]["annotations"]["batch.kubernetes.io/job-completion-index"]): p
                for p in cluster.list("pods", namespace, f"job-name={job}")
                if p.get("status", {}).get("phase") == "Running"}
        return (job, pods) if len(pods) == count else None
    return wait_for(f"{count} running pods of {name}", probe, timeouts.MEDIUM)


@pytest.fixture
def running(cluster: Cluster, operator: OperatorProcess, namespace: str, behaviour: Behaviour) -> dict[str, Any]:
    behaviour.set(namespace, seconds=300)  # the pods stay Running for the whole test
    cluster.apply(depth_batch("mine", gpus=0, parallelism=2), namespace)
    cluster.apply(depth_batch(LONG_NAME, gpus=0), namespace)
    job, pods = _running_pods(cluster, namespace, "mine", 2)
    long_job, long_pods = _running_pods(cluster, namespace, LONG_NAME, 1)
    assert len(long_job) > 55 and not long_pods[0]["metadata"]["name"].startswith(long_job + "-")
    return {"job": job, "pods": pods, "long_pods": long_pods}


def test_own_shard_progress_is_accepted(cluster: Cluster, namespace: str, running: dict[str, Any]) -> None:
    token = bound_token(cluster, namespace, running["pods"][1])
    proc = patch_status_as(cluster, token, "depthbatches", "mine", namespace,
                           {"progress": {"shards": {"1": _shard(4)}}})
    assert proc.returncode == 0, proc.stderr
    stored = cluster.get("depthbatch", "mine", namespace)["status"]["progress"]["shards"]["1"]
    assert (stored["done"], stored["total"]) == (4, 10)
    # A pod whose Job name is cut short in its own name is still recognised.
    long_token = bound_token(cluster, namespace, running["long_pods"][0])
    proc = patch_status_as(cluster, long_token, "depthbatches", LONG_NAME, namespace,
                           {"progress": {"shards": {"0": _shard(1)}}})
    assert proc.returncode == 0, proc.stderr


@pytest.mark.parametrize("status,refusal", [
    ({"phase": "Succeeded"}, "may not change status.phase"),
    ({"gpuSeconds": 0.5}, "may not change status.gpuSeconds"),
    ({"reason": "Completed", "message": "done"}, "may not change status.reason"),
    ({"conditions": [{"type": "Succeeded", "status": "True", "reason": "Completed",
                      "lastTransitionTime": "2026-01-01T00:00:00Z"}]}, "may not change status.conditions"),
    ({"progress": {"done": 999}}, "may not change status.progress.done"),
    ({"progress": {"shards": {"0": _shard(3)}}}, "only its own shard: status.progress.shards[1]"),
    ({"progress": {"shards": {"1": _shard(3), "7": _shard(1)}}}, "only its own shard"),
])
def test_anything_but_its_own_shard_is_refused(cluster: Cluster, namespace: str, running: dict[str, Any],
                                               status: dict[str, Any], refusal: str) -> None:
    token = bound_token(cluster, namespace, running["pods"][1])
    proc = patch_status_as(cluster, token, "depthbatches", "mine", namespace, status)
    assert proc.returncode != 0 and refusal in proc.stderr, proc.stderr
    assert "ValidatingAdmissionPolicy" in proc.stderr
    after = cluster.get("depthbatch", "mine", namespace)["status"]
    for key, forged in status.items():
        if key != "progress":
            assert after.get(key) != forged, key
    assert "7" not in after.get("progress", {}).get("shards", {})


def test_a_siblings_status_is_refused(cluster: Cluster, namespace: str, running: dict[str, Any]) -> None:
    token = bound_token(cluster, namespace, running["pods"][0])
    for status in ({"progress": {"shards": {"0": _shard(5)}}}, {"phase": "Failed"}):
        proc = patch_status_as(cluster, token, "depthbatches", LONG_NAME, namespace, status)
        assert proc.returncode != 0, proc.stderr
        assert "may patch only the status of the resource whose Job runs its pod" in proc.stderr
        assert running["pods"][0]["metadata"]["name"] in proc.stderr


def test_a_token_not_bound_to_a_pod_is_refused(cluster: Cluster, namespace: str, running: dict[str, Any]) -> None:
    proc = patch_status_as(cluster, unbound_token(cluster, namespace), "depthbatches", "mine", namespace,
                           {"progress": {"shards": {"0": _shard(1)}}})
    assert proc.returncode != 0 and "<token not bound to a pod>" in proc.stderr, proc.stderr


def test_the_policy_leaves_other_users_alone(cluster: Cluster, namespace: str, running: dict[str, Any]) -> None:
    """The admin (and so the operator's own account) is not matched: RBAC alone decides."""
    proc = cluster.kubectl("patch", "depthbatch", "mine", "-n", namespace, "--subresource=status",
                           "--type=merge", "-p", '{"status": {"progress": {"shards": {"0": {"done": 2}}}}}',
                           check=False)
    assert proc.returncode == 0, proc.stderr


def test_reconstruction_jobs_are_held_to_the_same_rule(cluster: Cluster, operator: OperatorProcess, namespace: str,
                                                       behaviour: Behaviour) -> None:
    from tests.factories import reconstruction_job

    behaviour.set(namespace, seconds=300)
    cluster.apply(reconstruction_job("scene", gpus=0), namespace)

    def probe() -> dict[str, Any] | None:
        job = ((cluster.get("reconstructionjob", "scene", namespace) or {}).get("status") or {}).get("jobName")
        pods = [p for p in cluster.list("pods", namespace, f"job-name={job}") if p["status"].get("phase") == "Running"]
        return pods[0] if job and pods else None
    token = bound_token(cluster, namespace, wait_for("the reconstruction's running pod", probe, timeouts.MEDIUM))
    ok = patch_status_as(cluster, token, "reconstructionjobs", "scene", namespace, {"progress": {"shards": {"0": _shard(2)}}})
    assert ok.returncode == 0, ok.stderr
    forged = patch_status_as(cluster, token, "reconstructionjobs", "scene", namespace, {"phase": "Succeeded"})
    assert forged.returncode != 0 and "may not change status.phase" in forged.stderr, forged.stderr
