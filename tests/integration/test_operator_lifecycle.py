"""The operator against the real control plane: samples to Succeeded, failures, fail fast."""

from __future__ import annotations

import datetime as dt
import json
import subprocess
import threading
from typing import Any

import pytest
import yaml

from spatialforge.crds.constants import EXIT_INVALID_INPUT, FINALIZER, GROUP, LABEL_NAME, VERSION
from spatialforge.crds.kinds import KINDS
from spatialforge.devcluster.operator_process import OperatorProcess
from spatialforge.devcluster.plane import REPO, Cluster, wait_for
from tests import timeouts
from tests.conftest import RUNNER_SECRET, Behaviour
from tests.factories import depth_batch, reconstruction_job

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


def parse_ts(value: str) -> dt.datetime:
    return dt.datetime.fromisoformat(value.replace("Z", "+00:00"))


class Follow:
    """Every version of one object, as a watch delivers them: tests assert on what happened in
    order instead of sampling on a clock. The watch resumes from the resourceVersion of a list
    taken in the constructor, so nothing written after the constructor returns is missed, however
    late the watch connection opens (a `kubectl get --watch` started in the background could open
    after the change it was meant to see)."""

    def __init__(self, cluster: Cluster, kind: str, name: str, ns: str) -> None:
        plural = next(k.plural for k in KINDS if k.singular == kind)
        path = f"/apis/{GROUP}/{VERSION}/namespaces/{ns}/{plural}?fieldSelector=metadata.name%3D{name}"
        listing = json.loads(cluster.kubectl("get", "--raw", path).stdout)
        self.seen: list[dict[str, Any]] = [{"type": "ADDED", "object": o} for o in listing["items"]]
        since = listing["metadata"]["resourceVersion"]
        self._proc = subprocess.Popen(
            [str(cluster.kubectl_path), "--kubeconfig", str(cluster.kubeconfig), "get", "--raw",
             f"{path}&watch=1&resourceVersion={since}"],
            stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
        self._thread = threading.Thread(target=self._read, daemon=True)
        self._thread.start()

    def _read(self) -> None:
        assert self._proc.stdout is not None
        decoder, buf = json.JSONDecoder(), ""
        for line in self._proc.stdout:
            buf += line
            while buf.strip():
                try:
                    event, end = decoder.raw_decode(buf.lstrip())
                except ValueError:
                    break
                buf = buf.lstrip()[end:]
                event["received"] = dt.datetime.now(dt.UTC)  # when this process read it
                self.seen.append(event)

    def statuses(self) -> list[dict[str, Any]]:
        return [(e["object"].get("status") or {}) for e in list(self.seen) if e.get("type") != "DELETED"]

    def wait(self, what: str, predicate: Any, timeout: float = timeouts.MEDIUM) -> dict[str, Any]:
        """The first event whose object satisfies `predicate`."""
        return wait_for(what, lambda: next((e["object"] for e in list(self.seen) if predicate(e)), None), timeout)

    def close(self) -> None:
        self._proc.kill()
        self._proc.wait(10)

    def __enter__(self) -> Follow:
        return self

    def __exit__(self, *_: object) -> None:
        self.close()


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


def test_work_no_node_fits_shows_it_at_once_and_never_holds_a_job(cluster: Cluster, operator: OperatorProcess,
                                                                   namespace: str) -> None:
    # Nodes have 4 GPUs each; 8 per pod fits none. Nodes autoscale by default: it waits out the
    # fail-fast window (3 s in tests) holding nothing, then fails.
    with Follow(cluster, "depthbatch", "too-big", namespace) as follow:
        cluster.apply(depth_batch("too-big", gpus=8), namespace)
        follow.wait("Failed", lambda e: (e["object"].get("status") or {}).get("phase") == "Failed")
    first = next(s for s in follow.statuses() if s.get("reason"))
    assert first["reason"] == "NoFittingNode" and "nvidia.com/gpu" in first["message"], follow.statuses()
    final = status(cluster, "depthbatch", "too-big", namespace)
    assert final["reason"] == "NoFittingNode" and "jobName" not in final
    assert not any(s.get("jobName") for s in follow.statuses()) and not cluster.list("jobs", namespace)


def test_admitted_pod_the_scheduler_cannot_place_shows_its_message(cluster: Cluster, operator: OperatorProcess,
                                                                   namespace: str, behaviour: Behaviour) -> None:
    # Every GPU of both nodes taken by one long resource; the next fits a node but finds no room.
    behaviour.set(f"{namespace}_hog", seconds=3600)
    cluster.apply(depth_batch("hog", gpus=4, parallelism=2), namespace)
    try:
        wait_phase(cluster, "depthbatch", "hog", namespace, "Running")
        with Follow(cluster, "depthbatch", "late", namespace) as follow:
            cluster.apply(depth_batch("late", gpus=1), namespace)
            follow.wait("Failed", lambda e: (e["object"].get("status") or {}).get("phase") == "Failed")
        unschedulable = next(s for s in follow.statuses() if s.get("reason") == "Unschedulable")
        assert unschedulable["phase"] == "Pending" and "Insufficient nvidia.com/gpu" in unschedulable["message"]
        assert status(cluster, "depthbatch", "late", namespace)["reason"] == "Unschedulable"
        wait_for("the late Job to be deleted",
                 lambda: not cluster.list("jobs", namespace, f"{LABEL_NAME}=late"), timeouts.SHORT)
    finally:  # give the GPUs back to the tests that follow
        cluster.kubectl("delete", "depthbatch", "hog", "-n", namespace, "--wait=true", "--timeout=30s", check=False)


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
    wait_for("some GPU time", lambda: status(cluster, "depthbatch", "long", namespace).get("gpuSeconds", 0) >= 1,
             timeouts.SHORT)
    before = cluster.list("jobs", namespace)
    assert len(before) == 1
    cluster.kubectl("patch", "depthbatch", "long", "-n", namespace, "--type=merge", "-p", '{"spec":{"suspend":true}}')

    def suspended_job() -> dict[str, Any] | None:
        jobs = cluster.list("jobs", namespace)
        assert len(jobs) == 1 and jobs[0]["metadata"]["uid"] == before[0]["metadata"]["uid"], "the Job was replaced"
        return jobs[0] if jobs[0]["spec"].get("suspend") is True else None

    wait_for("the same Job to be suspended", suspended_job, timeouts.SHORT)
    wait_for("the pods to go", lambda: not cluster.list("pods", namespace), timeouts.SHORT)
    st = wait_for("suspended status", lambda: (s := status(cluster, "depthbatch", "long", namespace)).get("reason") == "SuspendedBySpec" and s, timeouts.SHORT)
    assert st["phase"] == "Pending" and st["gpuSeconds"] > 0  # the suspended pod's GPU time is kept
    behaviour.set(f"{namespace}_long", seconds=0.5)
    cluster.kubectl("patch", "depthbatch", "long", "-n", namespace, "--type=merge", "-p", '{"spec":{"suspend":false}}')
    st = wait_phase(cluster, "depthbatch", "long", namespace, "Succeeded")
    jobs = cluster.list("jobs", namespace)
    assert [j["metadata"]["uid"] for j in jobs] == [before[0]["metadata"]["uid"]] and st["jobName"] == jobs[0]["metadata"]["name"]


def test_delete_mid_run_stops_the_work(cluster: Cluster, operator: OperatorProcess, namespace: str,
                                       behaviour: Behaviour) -> None:
    behaviour.set(f"{namespace}_doomed", seconds=120)
    cluster.apply(depth_batch("doomed", parallelism=2), namespace)
    wait_phase(cluster, "depthbatch", "doomed", namespace, "Running")
    assert len(cluster.list("pods", namespace)) == 2
    cluster.kubectl("delete", "depthbatch", "doomed", "-n", namespace, "--wait=true", "--timeout=30s")
    wait_for("the Job and pods to go",
             lambda: not cluster.list("jobs", namespace) and not cluster.list("pods", namespace), timeouts.SHORT)


def test_deleting_a_resource_needs_no_operator_and_legacy_finalizers_are_released(
        cluster: Cluster, operator: OperatorProcess, namespace: str, behaviour: Behaviour) -> None:
    """No finalizer: the Job's owner reference has the garbage collector delete the Job and its
    pods, even while the operator is stopped. A resource that still carries the finalizer of
    earlier versions gets its Job deleted and the finalizer removed when it is deleted."""
    behaviour.set(f"{namespace}_gone", seconds=120)
    behaviour.set(f"{namespace}_legacy", seconds=120)
    cluster.apply(depth_batch("gone"), namespace)
    legacy = depth_batch("legacy")
    legacy["metadata"]["finalizers"] = [FINALIZER]
    cluster.apply(legacy, namespace)
    wait_phase(cluster, "depthbatch", "gone", namespace, "Running")
    wait_phase(cluster, "depthbatch", "legacy", namespace, "Running")
    assert not (cluster.get("depthbatch", "gone", namespace) or {})["metadata"].get("finalizers")

    def owned_by(name: str) -> list[dict[str, Any]]:
        return [o for kind in ("jobs", "pods") for o in cluster.list(kind, namespace, f"{LABEL_NAME}={name}")]

    assert owned_by("gone") and owned_by("legacy")
    operator.stop()
    try:
        cluster.kubectl("delete", "depthbatch", "gone", "-n", namespace, "--wait=true", "--timeout=30s")
        wait_for("the Job and pods of the deleted resource to go", lambda: not owned_by("gone"), timeouts.SHORT)
    finally:
        operator.start()
    cluster.kubectl("delete", "depthbatch", "legacy", "-n", namespace, "--wait=true", "--timeout=60s")
    wait_for("the legacy resource's Job and pods to go", lambda: not owned_by("legacy"), timeouts.SHORT)


def test_ttl_after_finished_deletes_the_resource(cluster: Cluster, operator: OperatorProcess, namespace: str) -> None:
    ttl = 3
    with Follow(cluster, "depthbatch", "short-lived", namespace) as follow:
        cluster.apply(depth_batch("short-lived", ttlSecondsAfterFinished=ttl), namespace)
        # No finalizer holds it: the resource goes at once, and its DELETED event is the deletion.
        follow.wait("the resource to be deleted after its TTL", lambda e: e.get("type") == "DELETED", timeouts.MEDIUM)
    deleted = next(e for e in list(follow.seen) if e.get("type") == "DELETED")
    phases = [s.get("phase") for s in follow.statuses()]
    assert "Succeeded" in phases, phases
    st = deleted["object"]["status"]
    assert st["phase"] == "Succeeded"
    # Timestamps have whole seconds (rounded down): deleted no earlier than completion + TTL.
    assert deleted["received"] >= parse_ts(st["completionTime"]) + dt.timedelta(seconds=ttl)
    assert cluster.get("depthbatch", "short-lived", namespace) is None


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


def test_container_config_error_fails_fast(cluster: Cluster, operator: OperatorProcess, namespace: str,
                                           behaviour: Behaviour) -> None:
    behaviour.set(f"{namespace}_no-config", waitingReason="CreateContainerConfigError", message='configmap "x" not found')
    cluster.apply(depth_batch("no-config"), namespace)
    st = wait_phase(cluster, "depthbatch", "no-config", namespace, "Failed")
    assert st["reason"] == "ContainerConfigError" and 'configmap "x" not found' in st["message"]


def test_missing_runner_secret_fails_fast_naming_it(cluster: Cluster, operator: OperatorProcess, namespace: str,
                                                     behaviour: Behaviour) -> None:
    # The node agent runs the pod as a process, resolving envFrom like a kubelet; the session
    # operator gives runner pods envFrom the object-store Secret, which this namespace lacks.
    behaviour.set(f"{namespace}_no-secret", mode="process")
    cluster.apply(depth_batch("no-secret"), namespace)
    st = wait_phase(cluster, "depthbatch", "no-secret", namespace, "Failed")
    assert st["reason"] == "ContainerConfigError" and RUNNER_SECRET in st["message"], st
    wait_for("the Job to be deleted", lambda: not cluster.list("jobs", namespace), timeouts.SHORT)


def test_pods_that_cannot_be_created_fail_fast(cluster: Cluster, operator: OperatorProcess, namespace: str) -> None:
    cluster.apply({"apiVersion": "v1", "kind": "ResourceQuota", "metadata": {"name": "no-pods"},
                   "spec": {"hard": {"pods": "0"}}}, namespace)
    cluster.apply(depth_batch("no-room"), namespace)
    st = wait_phase(cluster, "depthbatch", "no-room", namespace, "Failed")
    assert st["reason"] == "PodCreationFailed" and "exceeded quota" in st["message"], st


def test_deleting_the_job_of_a_running_resource_fails_it(cluster: Cluster, operator: OperatorProcess,
                                                          namespace: str, behaviour: Behaviour) -> None:
    behaviour.set(f"{namespace}_orphan", seconds=3600)
    cluster.apply(depth_batch("orphan"), namespace)
    st = wait_phase(cluster, "depthbatch", "orphan", namespace, "Running")
    cluster.kubectl("delete", "job", st["jobName"], "-n", namespace, "--wait=false")
    st = wait_phase(cluster, "depthbatch", "orphan", namespace, "Failed")
    assert st["reason"] == "JobDeleted" and st["jobName"] in st["message"]


def test_a_spec_the_operator_rejects_fails_naming_the_field(cluster: Cluster, operator: OperatorProcess,
                                                             namespace: str) -> None:
    # A resource stored under a looser, older CRD (the CRD is loosened for a moment here): the
    # operator's own validation ends it Failed, naming the field, and never creates a Job.
    crd = REPO / "crds" / "spatialforge.io_depthbatches.yaml"
    loose = yaml.safe_load(crd.read_text())
    version = loose["spec"]["versions"][0]
    version["schema"]["openAPIV3Schema"]["properties"]["spec"] = {"type": "object",
                                                                  "x-kubernetes-preserve-unknown-fields": True}
    version["schema"]["openAPIV3Schema"]["properties"]["spec"].pop("x-kubernetes-validations", None)
    try:
        cluster.kubectl("apply", "--server-side", "--force-conflicts", "-f", "-", input=yaml.safe_dump(loose))
        cluster.kubectl("wait", "--for=condition=Established", "crd/depthbatches.spatialforge.io", "--timeout=30s")
        wait_for("the loose schema to serve", lambda: cluster.kubectl(
            "apply", "-n", namespace, "-f", "-", input=yaml.safe_dump(depth_batch("old-shape", parallelism=0)),
            check=False).returncode == 0, timeouts.SHORT)
    finally:
        cluster.kubectl("apply", "--server-side", "--force-conflicts", "-f", str(crd))
    st = wait_phase(cluster, "depthbatch", "old-shape", namespace, "Failed")
    assert st["reason"] == "InvalidSpec" and "parallelism" in st["message"]
    assert not cluster.list("jobs", namespace)


def test_a_deadline_changed_on_a_live_job_follows_the_spec(cluster: Cluster, operator: OperatorProcess,
                                                            namespace: str, behaviour: Behaviour) -> None:
    behaviour.set(f"{namespace}_timed", seconds=3600)
    cluster.apply(depth_batch("timed", activeDeadlineSeconds=600), namespace)
    st = wait_phase(cluster, "depthbatch", "timed", namespace, "Running")

    def deadline() -> int | None:
        return (cluster.get("job", st["jobName"], namespace) or {}).get("spec", {}).get("activeDeadlineSeconds")

    assert deadline() == 600
    cluster.kubectl("patch", "depthbatch", "timed", "-n", namespace, "--type=merge",
                    "-p", '{"spec":{"activeDeadlineSeconds":900}}')
    wait_for("the Job's deadline to follow", lambda: deadline() == 900, timeouts.SHORT)
    cluster.kubectl("patch", "depthbatch", "timed", "-n", namespace, "--type=json",
                    "-p", '[{"op":"remove","path":"/spec/activeDeadlineSeconds"}]')
    wait_for("the Job's deadline to be removed", lambda: deadline() is None, timeouts.SHORT)


def forge(cluster: Cluster, name: str, ns: str, status_patch: dict[str, Any]) -> None:
    """Write the status as a cluster admin would (not the operator)."""
    cluster.kubectl("patch", "depthbatch", name, "-n", ns, "--subresource=status", "--type=merge",
                    "-p", json.dumps({"status": status_patch}))


def test_a_status_written_by_someone_else_is_put_back(cluster: Cluster, operator: OperatorProcess,
                                                      namespace: str, behaviour: Behaviour) -> None:
    behaviour.set(f"{namespace}_honest", seconds=3600)
    cluster.apply(depth_batch("honest"), namespace)
    wait_phase(cluster, "depthbatch", "honest", namespace, "Running")
    wait_for("some GPU time", lambda: status(cluster, "depthbatch", "honest", namespace).get("gpuSeconds", 0) >= 1,
             timeouts.SHORT)
    with Follow(cluster, "depthbatch", "honest", namespace) as follow:
        forge(cluster, "honest", namespace, {"phase": "Succeeded", "reason": "Completed", "gpuSeconds": 0.001,
                                             "completionTime": "2026-01-01T00:00:00Z"})
        phases = lambda: [s.get("phase") for s in follow.statuses()]  # noqa: E731
        wait_for("the forged status, then the phase put back",
                 lambda: "Succeeded" in phases() and "Running" in phases()[phases().index("Succeeded"):], timeouts.SHORT)
        back = follow.statuses()[-1]
    assert back["gpuSeconds"] >= 1 and "completionTime" not in back
    # The forged phase released no GPU: the Job still runs and nothing else was admitted for it.
    assert len(cluster.list("jobs", namespace)) == 1


def test_a_terminal_status_is_put_back_too(cluster: Cluster, operator: OperatorProcess, namespace: str,
                                           behaviour: Behaviour) -> None:
    behaviour.set(f"{namespace}_done", seconds=1.5)
    cluster.apply(depth_batch("done"), namespace)
    good = wait_phase(cluster, "depthbatch", "done", namespace, "Succeeded")
    assert good["gpuSeconds"] > 0
    forge(cluster, "done", namespace, {"phase": "Failed", "reason": "BackoffLimitExceeded", "gpuSeconds": 0})
    back = wait_for("the terminal status to be put back", lambda: (s := status(cluster, "depthbatch", "done", namespace))
                    .get("phase") == "Succeeded" and s, timeouts.SHORT)
    assert back["gpuSeconds"] == good["gpuSeconds"] and back["reason"] == "Completed"
    assert back["completionTime"] == good["completionTime"]
