"""The operator against the real control plane: samples to Succeeded, failures, fail fast."""

from __future__ import annotations

import json
from typing import Any

import pytest
import yaml

from spatialforge.crds.constants import EXIT_INVALID_INPUT, LABEL_NAME
from tests import timeouts
from tests.cluster import REPO, Cluster, wait_for
from tests.conftest import Behaviour
from tests.factories import depth_batch, reconstruction_job
from tests.operator_process import OperatorProcess

pytestmark = pytest.mark.integration


def status(cluster: Cluster, kind: str, name: str, ns: str) -> dict[str, Any]:
    obj = cluster.get(kind, name, ns)
    return (obj or {}).get("status") or {}


def wait_phase(cluster: Cluster, kind: str, name: str, ns: str, phase: str, timeout: float = timeouts.MEDIUM) -> dict[str, Any]:
    last: dict[str, Any] = {}

    def probe() -> dict[str, Any] | None:
        st = status(cluster, kind, name, ns)
        last.clear()
        last.update(st)
        return st if st.get("phase") == phase else None

    try:
        return wait_for(f"{kind}/{name} to be {phase}", probe, timeout)
    except AssertionError as exc:
        raise AssertionError(f"{exc}; its last status: {last}") from None


def condition(st: dict[str, Any], type_: str) -> dict[str, Any]:
    return next(c for c in st.get("conditions", []) if c["type"] == type_)


@pytest.mark.parametrize("sample", ["depthbatch", "reconstructionjob"])
def test_sample_runs_to_succeeded(cluster: Cluster, operator: OperatorProcess, namespace: str, sample: str) -> None:
    doc = yaml.safe_load((REPO / "crds" / "samples" / f"{sample}.yaml").read_text())
    cluster.apply(doc, namespace)
    name = doc["metadata"]["name"]
    st = wait_phase(cluster, doc["kind"], name, namespace, "Succeeded")
    assert st["reason"] == "Completed" and st["observedGeneration"] == 1
    assert condition(st, "Succeeded")["status"] == "True"
    assert condition(st, "Admitted")["status"] == "True"
    assert st["startTime"] and st["completionTime"] and st["gpuSeconds"] > 0
    assert st["manifestUri"].startswith(f"s3://spatialforge-demo/results/{namespace}/{name}/")
    jobs = cluster.list("jobs", namespace, f"{LABEL_NAME}={name}")
    assert len(jobs) == 1 and jobs[0]["metadata"]["name"] == st["jobName"]
    owner = jobs[0]["metadata"]["ownerReferences"][0]
    assert owner["kind"] == doc["kind"] and owner["controller"] is True
    events = cluster.kubectl("get", "events", "-n", namespace, "--field-selector",
                             f"involvedObject.name={name}", "-o", "json").stdout
    assert "PhaseSucceeded" in events


def test_invalid_input_fails_without_retry(cluster: Cluster, operator: OperatorProcess, namespace: str,
                                           behaviour: Behaviour) -> None:
    behaviour.set(f"{namespace}_bad-input", exitCode=EXIT_INVALID_INPUT, seconds=0.5,
                  message="inputs/broken.jpg: not a decodable image")
    cluster.apply(depth_batch("bad-input", backoffLimit=3), namespace)
    st = wait_phase(cluster, "depthbatch", "bad-input", namespace, "Failed")
    assert st["reason"] == "InvalidInput" and "broken.jpg" in st["message"]
    assert st["attempts"] == 1
    assert condition(st, "Failed")["reason"] == "InvalidInput"


def test_oom_like_failure_is_retried(cluster: Cluster, operator: OperatorProcess, namespace: str,
                                     behaviour: Behaviour) -> None:
    behaviour.set(f"{namespace}_flaky", exitCodes=[137, 0], seconds=0.5)
    cluster.apply(reconstruction_job("flaky", backoffLimit=2), namespace)
    st = wait_phase(cluster, "reconstructionjob", "flaky", namespace, "Succeeded")
    assert st["attempts"] == 2


def test_retries_exhausted_fail_with_backoff_reason(cluster: Cluster, operator: OperatorProcess, namespace: str,
                                                    behaviour: Behaviour) -> None:
    behaviour.set(f"{namespace}_always-crash", exitCode=1, seconds=0.2, message="CUDA error: device-side assert")
    cluster.apply(depth_batch("always-crash", backoffLimit=1), namespace)
    st = wait_phase(cluster, "depthbatch", "always-crash", namespace, "Failed")
    assert st["reason"] == "BackoffLimitExceeded" and st["attempts"] == 2


def test_unschedulable_fails_fast(cluster: Cluster, operator: OperatorProcess, namespace: str) -> None:
    # Nodes have 4 GPUs each; 8 per pod can never be scheduled.
    cluster.apply(depth_batch("too-big", gpus=8), namespace)
    st = wait_phase(cluster, "depthbatch", "too-big", namespace, "Failed", timeouts.MEDIUM)
    assert st["reason"] == "Unschedulable" and "nvidia.com/gpu" in st["message"]
    wait_for("the Job to be deleted", lambda: not cluster.list("jobs", namespace), timeouts.SHORT)


def test_image_pull_failure_fails_fast(cluster: Cluster, operator: OperatorProcess, namespace: str,
                                       behaviour: Behaviour) -> None:
    behaviour.set(f"{namespace}_no-image", waitingReason="ImagePullBackOff", message="image not found")
    cluster.apply(depth_batch("no-image"), namespace)
    st = wait_phase(cluster, "depthbatch", "no-image", namespace, "Failed")
    assert st["reason"] == "ImagePullFailed"


def test_suspend_and_resume(cluster: Cluster, operator: OperatorProcess, namespace: str) -> None:
    cluster.apply(depth_batch("held", suspend=True), namespace)
    st = wait_for("suspended status", lambda: (s := status(cluster, "depthbatch", "held", namespace)).get("reason") == "SuspendedBySpec" and s, timeouts.SHORT)
    assert st["phase"] == "Pending" and condition(st, "Suspended")["status"] == "True"
    assert not cluster.list("jobs", namespace)
    cluster.kubectl("patch", "depthbatch", "held", "-n", namespace, "--type=merge", "-p", '{"spec":{"suspend":false}}')
    st = wait_phase(cluster, "depthbatch", "held", namespace, "Succeeded")
    assert st["observedGeneration"] == 2


def test_suspending_a_running_resource_suspends_its_job(cluster: Cluster, operator: OperatorProcess,
                                                        namespace: str, behaviour: Behaviour) -> None:
    behaviour.set(f"{namespace}_long", seconds=60)
    cluster.apply(depth_batch("long"), namespace)
    wait_phase(cluster, "depthbatch", "long", namespace, "Running")
    cluster.kubectl("patch", "depthbatch", "long", "-n", namespace, "--type=merge", "-p", '{"spec":{"suspend":true}}')
    wait_for("the Job to be suspended",
             lambda: all(j["spec"].get("suspend") for j in cluster.list("jobs", namespace)), timeouts.SHORT)
    wait_for("the pods to go", lambda: not cluster.list("pods", namespace), timeouts.SHORT)


def test_delete_mid_run_stops_the_work(cluster: Cluster, operator: OperatorProcess, namespace: str,
                                       behaviour: Behaviour) -> None:
    behaviour.set(f"{namespace}_doomed", seconds=120)
    cluster.apply(depth_batch("doomed", parallelism=2), namespace)
    wait_phase(cluster, "depthbatch", "doomed", namespace, "Running")
    assert len(cluster.list("pods", namespace)) == 2
    cluster.kubectl("delete", "depthbatch", "doomed", "-n", namespace, "--wait=true", "--timeout=30s")
    wait_for("the Job and pods to go",
             lambda: not cluster.list("jobs", namespace) and not cluster.list("pods", namespace), timeouts.SHORT)


def test_ttl_after_finished_deletes_the_resource(cluster: Cluster, operator: OperatorProcess, namespace: str) -> None:
    cluster.apply(depth_batch("short-lived", ttlSecondsAfterFinished=1), namespace)
    wait_for("the resource to be deleted after its TTL",
             lambda: cluster.get("depthbatch", "short-lived", namespace) is None, timeouts.MEDIUM)


def test_kueue_queue_name_hands_admission_to_kueue(cluster: Cluster, operator: OperatorProcess, namespace: str) -> None:
    cluster.apply(depth_batch("kueued", queueName="team-a"), namespace)
    job = wait_for("a suspended Job", lambda: cluster.list("jobs", namespace), timeouts.SHORT)[0]
    assert job["spec"]["suspend"] is True
    assert job["metadata"]["labels"]["kueue.x-k8s.io/queue-name"] == "team-a"
    st = wait_phase(cluster, "depthbatch", "kueued", namespace, "Queued")
    assert st["reason"] == "WaitingForKueue"
    # What Kueue does on admission: unsuspend the Job.
    cluster.kubectl("patch", "job", job["metadata"]["name"], "-n", namespace, "--type=merge",
                    "-p", json.dumps({"spec": {"suspend": False}}))
    wait_phase(cluster, "depthbatch", "kueued", namespace, "Succeeded")
