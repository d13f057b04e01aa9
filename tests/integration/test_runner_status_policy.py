"""The runner-status ValidatingAdmissionPolicy on the real plane, with real runner credentials:
tokens of the runner ServiceAccount bound to the pods the Job controller made for the operator's
Jobs. A runner may change its own shard's progress in its own resource; nothing else."""

from __future__ import annotations

import datetime as dt
import hashlib
import subprocess
from typing import Any

import pytest

from spatialforge.crds.constants import LABEL_NAME
from spatialforge.crds.policy import MAX_JOB_NAME
from spatialforge.crds.rbac import RUNNER_SERVICE_ACCOUNT
from spatialforge.devcluster.operator_process import OperatorProcess
from spatialforge.devcluster.plane import Cluster, wait_for
from spatialforge.operator.children import build_job, parse
from spatialforge.operator.settings import OperatorSettings
from tests import timeouts
from tests.conftest import RUNNER_SECRET, Behaviour
from tests.factories import depth_batch
from tests.integration.runner_identity import bound_token, patch_status_as, unbound_token

pytestmark = pytest.mark.integration
# Long enough that its Job's name is cut to MAX_JOB_NAME, which its pods' names keep whole.
LONG_NAME = "sibling-whose-name-is-long-enough-to-cut-pod-names"
# Two names that share their first 60 characters: under the 60-character Job names of old,
# their pods from shard 10 on had the same prefix, so each runner could write the other's status.
TWINS = ("twins-" + "s" * 54 + "-a", "twins-" + "s" * 54 + "-b")


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
    assert len(long_job) <= MAX_JOB_NAME and not long_job.startswith(LONG_NAME)  # the name was cut
    assert long_pods[0]["metadata"]["name"].startswith(long_job + "-0-")  # and the pod kept all of the rest
    return {"job": job, "pods": pods, "long_pods": long_pods}


def test_own_shard_progress_is_accepted(cluster: Cluster, namespace: str, running: dict[str, Any]) -> None:
    token = bound_token(cluster, namespace, running["pods"][1])
    proc = patch_status_as(cluster, token, "depthbatches", "mine", namespace,
                           {"progress": {"shards": {"1": _shard(4)}}})
    assert proc.returncode == 0, proc.stderr
    stored = cluster.get("depthbatch", "mine", namespace)["status"]["progress"]["shards"]["1"]
    assert (stored["done"], stored["total"]) == (4, 10)
    # A pod of a Job whose name was cut to the longest allowed is recognised.
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
    """Only the runner's account is matched: for the admin, and for another service account
    (as the operator's own is), RBAC alone decides."""
    proc = cluster.kubectl("patch", "depthbatch", "mine", "-n", namespace, "--subresource=status",
                           "--type=merge", "-p", '{"status": {"progress": {"shards": {"0": {"done": 2}}}}}',
                           check=False)
    assert proc.returncode == 0, proc.stderr
    writer = "status-writer"
    cluster.kubectl("create", "serviceaccount", writer, "-n", namespace)
    cluster.kubectl("create", "role", writer, "-n", namespace, "--verb=get,patch",
                    "--resource=depthbatches.spatialforge.io/status")
    token = unbound_token(cluster, namespace, account=writer)
    refused = patch_status_as(cluster, token, "depthbatches", "mine", namespace, {"phase": "Failed"})
    assert refused.returncode != 0 and "forbidden" in refused.stderr.lower(), refused.stderr
    assert "ValidatingAdmissionPolicy" not in refused.stderr  # RBAC's refusal, not the policy's
    cluster.kubectl("create", "rolebinding", writer, "-n", namespace, f"--role={writer}",
                    f"--serviceaccount={namespace}:{writer}")

    def granted() -> subprocess.CompletedProcess[str] | None:  # RBAC caches are fresh within moments
        proc = patch_status_as(cluster, token, "depthbatches", LONG_NAME, namespace, {"phase": "Failed"})
        assert "ValidatingAdmissionPolicy" not in proc.stderr, proc.stderr
        return proc if proc.returncode == 0 else None
    assert "patched" in wait_for("the role binding to take effect", granted, timeouts.SHORT).stdout


def test_names_sharing_sixty_characters_are_refused_both_ways(cluster: Cluster, operator: OperatorProcess,
                                                              namespace: str, behaviour: Behaviour) -> None:
    """Shards 0 and 12 of each twin may write their own shard, never the other twin's."""
    behaviour.set(namespace, seconds=300)
    for name in TWINS:
        cluster.apply(depth_batch(name, gpus=0, parallelism=13), namespace)
    pods = {name: _running_pods(cluster, namespace, name, 13)[1] for name in TWINS}
    for own, other in (TWINS, TWINS[::-1]):
        for shard in (0, 12):
            token = bound_token(cluster, namespace, pods[own][shard])
            mine = patch_status_as(cluster, token, "depthbatches", own, namespace,
                                   {"progress": {"shards": {str(shard): _shard(1)}}})
            assert mine.returncode == 0, mine.stderr
            theirs = patch_status_as(cluster, token, "depthbatches", other, namespace,
                                     {"progress": {"shards": {str(shard): _shard(9)}}})
            assert theirs.returncode != 0, (own, shard, theirs.stderr)
            assert "may patch only the status of the resource whose Job runs its pod" in theirs.stderr
    for name in TWINS:
        shards = cluster.get("depthbatch", name, namespace)["status"]["progress"]["shards"]
        assert {k: v["done"] for k, v in shards.items() if k in ("0", "12")} == {"0": 1, "12": 1}


def test_a_job_named_before_the_upgrade_is_followed_and_its_runners_still_write(
        cluster: Cluster, operator: OperatorProcess, namespace: str, behaviour: Behaviour) -> None:
    """An operator upgraded mid-run finds the 60-character Job its predecessor made, makes no
    second one, and that Job's runners (shard 12's pod name keeps no uid hash) can still write."""
    behaviour.set(namespace, seconds=300)
    cluster.apply(depth_batch("warm", gpus=0), namespace)  # the operator makes the runner identity
    wait_for("the runner identity", lambda: cluster.get("serviceaccount", RUNNER_SERVICE_ACCOUNT, namespace),
             timeouts.MEDIUM)
    name = TWINS[0]
    operator.stop()
    try:
        cluster.apply(depth_batch(name, gpus=0, parallelism=13), namespace)
        obj = cluster.get("depthbatch", name, namespace)
        job = build_job(parse(obj), OperatorSettings(runner_env_from_secret=RUNNER_SECRET), suspend=False)
        legacy = f"{name[:51]}-db{hashlib.sha256(obj['metadata']['uid'].encode()).hexdigest()[:6]}"
        assert len(legacy) == 60 and legacy != job["metadata"]["name"]
        job["metadata"]["name"] = legacy  # as the operator before the upgrade named it
        cluster.apply(job, namespace)
    finally:
        operator.start()
    job_name, pods = _running_pods(cluster, namespace, name, 13)
    assert job_name == legacy and not pods[12]["metadata"]["name"].startswith(legacy[:55])
    for shard in (0, 12):
        token = bound_token(cluster, namespace, pods[shard])
        proc = patch_status_as(cluster, token, "depthbatches", name, namespace,
                               {"progress": {"shards": {str(shard): _shard(2)}}})
        assert proc.returncode == 0, proc.stderr
    jobs = cluster.list("jobs", namespace, f"{LABEL_NAME}={name}")
    assert [j["metadata"]["name"] for j in jobs] == [legacy]


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
