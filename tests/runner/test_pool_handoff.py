"""Hand-offs of small DepthBatches to a DepthPool that fails (issue 19 §1), on the local plane
with real depth servers run by the node agent, real runner Jobs and MinIO.

Every batch must end Succeeded exactly once with its outputs written once. "Once" is read from
MinIO itself: the output bucket has versioning on, so a second write of any output would be a
second version of its key.
"""

from __future__ import annotations

import io
import json
import os
import signal
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pytest
from PIL import Image

from spatialforge.devcluster.operator_process import OperatorProcess
from spatialforge.devcluster.plane import SYSTEM_NAMESPACE, Cluster, wait_for
from spatialforge.devcluster.ports import free_port
from tests import timeouts
from tests.apiserver.test_sync import _pod_address
from tests.conftest import RUNNER_SECRET, Behaviour
from tests.factories import depth_batch
from tests.integration.test_operator_lifecycle import status
from tests.runner.test_pool_cluster import SERVE, depth_pool, quota, serving, set_quota  # noqa: F401 (quota: a fixture)

pytestmark = [pytest.mark.e2e, pytest.mark.slow]
HAND_OFF = "spatialforge.io/pool-hand-off"
TIMEOUT = 6  # the operator's hand-off timeout here (SPATIALFORGE_POOL_HANDOFF_TIMEOUT_SECONDS)


@pytest.fixture
def strict_operator(operator: OperatorProcess) -> Iterator[OperatorProcess]:
    """The session's operator restarted with a short hand-off timeout and a back-off after two
    failures in a row; restarted with its own settings afterwards."""
    saved = dict(operator.settings)
    operator.settings.update({"SPATIALFORGE_POOL_HANDOFF_TIMEOUT_SECONDS": str(TIMEOUT),
                              "SPATIALFORGE_POOL_HANDOFF_FAILURES_BEFORE_BACKOFF": "2",
                              "SPATIALFORGE_POOL_HANDOFF_BACKOFF_SECONDS": "600"})
    operator.stop()
    operator.start()
    yield operator
    operator.stop()
    operator.settings.clear()
    operator.settings.update(saved)
    operator.start()


class Store:
    """The tenant's bucket (versioned) and what was written to it."""

    def __init__(self, minio_env: dict[str, str], bucket: str) -> None:
        import boto3

        self.bucket = bucket
        self.s3 = boto3.client("s3", endpoint_url=minio_env["SPATIALFORGE_S3_ENDPOINT"],
                               aws_access_key_id=minio_env["AWS_ACCESS_KEY_ID"],
                               aws_secret_access_key=minio_env["AWS_SECRET_ACCESS_KEY"], region_name="us-east-1")
        self.s3.create_bucket(Bucket=bucket)
        self.s3.put_bucket_versioning(Bucket=bucket, VersioningConfiguration={"Status": "Enabled"})
        for i in range(2):
            buf = io.BytesIO()
            Image.fromarray(np.random.default_rng(i).integers(0, 255, (48, 64, 3), dtype=np.uint8)).save(buf, "PNG")
            self.s3.put_object(Bucket=bucket, Key=f"in/img-{i}.png", Body=buf.getvalue())

    def batch(self, name: str) -> dict[str, Any]:
        return depth_batch(name, gpus=0, inputs=[f"s3://{self.bucket}/in/img-0.png", f"s3://{self.bucket}/in/img-1.png"],
                           output={"uri": f"s3://{self.bucket}/out"})

    def versions(self, ns: str, name: str) -> dict[str, list[str]]:
        """Every version of every result object of the batch (delete markers too), by name."""
        prefix = f"out/{ns}/{name}/shard-00000/"
        page = self.s3.list_object_versions(Bucket=self.bucket, Prefix=prefix)
        out: dict[str, list[str]] = {}
        for v in page.get("Versions", []):
            out.setdefault(v["Key"][len(prefix):], []).append(f"{v['VersionId']} {v['LastModified']} {v['Size']}")
        for v in page.get("DeleteMarkers", []):
            out.setdefault(v["Key"][len(prefix):], []).append(f"{v['VersionId']} {v['LastModified']} deleted")
        return out


@pytest.fixture
def store(cluster: Cluster, namespace: str, behaviour: Behaviour, minio_env: dict[str, str],
          model_dir: Path) -> Store:
    """Runner pods of the namespace run as real processes with the tiny model and MinIO."""
    cluster.apply({"apiVersion": "v1", "kind": "Secret", "metadata": {"name": RUNNER_SECRET},
                   "stringData": {**minio_env, "SPATIALFORGE_MODEL_DIR": str(model_dir), "HF_HUB_OFFLINE": "1",
                                  "SPATIALFORGE_DEVICE": "cpu", "OMP_NUM_THREADS": "1"}}, namespace)
    behaviour.set(namespace, mode="process")
    return Store(minio_env, f"ho-{namespace}")


def finished(cluster: Cluster, ns: str, name: str) -> dict[str, Any]:
    return wait_for(f"{name} Succeeded", lambda: (s := status(cluster, "depthbatch", name, ns)).get("phase") == "Succeeded"
                    and s, timeouts.LONG)


def hand_off(cluster: Cluster, ns: str, name: str) -> dict[str, Any] | None:
    raw = ((cluster.get("depthbatch", name, ns) or {}).get("metadata", {}).get("annotations") or {}).get(HAND_OFF)
    return json.loads(raw) if raw else None


def condition(st: dict[str, Any], type_: str) -> dict[str, Any]:
    return next((c for c in st.get("conditions") or [] if c["type"] == type_), {})


def assert_once(cluster: Cluster, store: Store, ns: str, name: str, st: dict[str, Any]) -> None:
    versions = store.versions(ns, name)
    assert {"img-0.depth.png", "img-1.depth.png", "manifest.json"} <= set(versions), versions
    assert all(len(v) == 1 for v in versions.values()), f"an output was written more than once: {versions}"
    events = cluster.list("events", ns, None)
    succeeded = [e for e in events if e["involvedObject"].get("name") == name and e.get("reason") == "Succeeded"]
    assert len(succeeded) <= 1, succeeded
    assert st["phase"] == "Succeeded"


def failed_hand_off_ran_as_a_job(cluster: Cluster, store: Store, ns: str, name: str, says: str) -> dict[str, Any]:
    st = finished(cluster, ns, name)
    assert st["reason"] == "Completed" and st.get("jobName"), st  # a Job ran it, after the pool failed
    record = hand_off(cluster, ns, name)
    assert record is not None and says in record["failed"], record
    handed = condition(st, "PoolHandOff")
    assert handed["status"] == "False" and handed["reason"] == "HandOffFailed" and says in handed["message"]
    events = [e for e in cluster.list("events", ns, None)
              if e["involvedObject"].get("name") == name and e.get("reason") == "HandOffFailed"]
    assert len(events) == 1 and says in events[0]["message"]
    assert_once(cluster, store, ns, name, st)
    return st


def pool_with_replica(cluster: Cluster, ns: str, name: str) -> str:
    cluster.apply(depth_pool(name), ns)
    return wait_for("a ready server", lambda: serving(cluster, ns, name, 1), SERVE)[0]


def test_a_pool_answering_500_then_backing_off(cluster: Cluster, strict_operator: OperatorProcess, store: Store,
                                              namespace: str, behaviour: Behaviour, minio_env: dict[str, str],
                                              model_dir: Path) -> None:
    """A platform pool whose replicas have a wrong object-store key answers 500 (a storage error,
    not the batch's fault): each batch runs as a Job once; after two failures in a row the pool
    is skipped and says so."""
    ns = namespace
    cluster.apply({"apiVersion": "v1", "kind": "Secret", "metadata": {"name": RUNNER_SECRET},
                   "stringData": {**minio_env, "AWS_SECRET_ACCESS_KEY": "not-the-key-of-this-minio",
                                  "SPATIALFORGE_MODEL_DIR": str(model_dir), "HF_HUB_OFFLINE": "1",
                                  "SPATIALFORGE_DEVICE": "cpu", "OMP_NUM_THREADS": "1"}}, SYSTEM_NAMESPACE)
    behaviour.set(SYSTEM_NAMESPACE, mode="process")
    try:
        pool_with_replica(cluster, SYSTEM_NAMESPACE, "broken")
        for name in ("first", "second"):
            cluster.apply(store.batch(name), ns)
            failed_hand_off_ran_as_a_job(cluster, store, ns, name, "answered 500")
        st = wait_for("the pool backing off", lambda: (s := status(cluster, "depthpool", "broken", SYSTEM_NAMESPACE))
                      .get("backOffUntil") and s, timeouts.SHORT)
        assert st["failedHandOffs"] == 2
        backoff = condition(st, "HandOffBackOff")
        assert backoff["status"] == "True" and backoff["reason"] == "HandOffsFailing"
        cluster.apply(store.batch("third"), ns)  # not handed off at all while the pool backs off
        st = finished(cluster, ns, "third")
        assert st["reason"] == "Completed" and hand_off(cluster, ns, "third") is None
        assert_once(cluster, store, ns, "third", st)
    finally:
        cluster.kubectl("delete", "depthpool", "broken", "-n", SYSTEM_NAMESPACE, "--ignore-not-found")


def test_a_pool_endpoint_refusing_connections(cluster: Cluster, strict_operator: OperatorProcess, store: Store,
                                             namespace: str) -> None:
    """The pool's Service lists an address where nothing listens (a replica that died before
    its endpoint was withdrawn): refused, recorded, run as a Job."""
    ns = namespace
    cluster.apply(depth_pool("gone", replicas=0, minReplicas=0), ns)
    host = _pod_address()  # an address of this host EndpointSlices accept; nothing listens on the port
    cluster.apply({"apiVersion": "discovery.k8s.io/v1", "kind": "EndpointSlice",
                   "metadata": {"name": "spatialforge-pool-gone-stale",
                                "labels": {"kubernetes.io/service-name": "spatialforge-pool-gone",
                                           "app.kubernetes.io/component": "depth-pool",
                                           "endpointslice.kubernetes.io/managed-by": "tests.spatialforge.io"}},
                   "addressType": "IPv4", "ports": [{"name": "http", "port": free_port(), "protocol": "TCP"}],
                   "endpoints": [{"addresses": [host], "conditions": {"ready": True}}]}, ns)
    wait_for("the operator seeing the stale endpoint",
             lambda: status(cluster, "depthpool", "gone", ns).get("endpoints") == 1, timeouts.MEDIUM)
    try:
        cluster.apply(store.batch("refused"), ns)
        failed_hand_off_ran_as_a_job(cluster, store, ns, "refused", "could not be reached")
    finally:
        subprocess.run(["ip", "addr", "del", f"{host}/32", "dev", "lo"], capture_output=True, check=False)


def _server_pid(url: str) -> int:
    """The node agent's process serving `url` (its env has the pod IP it listens on)."""
    host = url.split("//")[1].rsplit(":", 1)[0]
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            environ = (entry / "environ").read_bytes().split(b"\0")
            cmdline = (entry / "cmdline").read_bytes()
        except OSError:
            continue
        if f"POD_IP={host}".encode() in environ and b"serve" in cmdline:
            return int(entry.name)
    raise AssertionError(f"no server process for {url}")


def test_a_hung_pool_times_out_and_never_runs_the_batch_later(cluster: Cluster, strict_operator: OperatorProcess,
                                                              store: Store, namespace: str) -> None:
    """A replica frozen (SIGSTOP) while ready: the hand-off times out and a Job runs the batch.
    Resumed afterwards, the replica reads the old request and must not run it (its deadline
    has passed), so the outputs stay written once."""
    ns = namespace
    url = pool_with_replica(cluster, ns, "frozen")
    pgid = os.getpgid(_server_pid(url))
    os.killpg(pgid, signal.SIGSTOP)
    try:
        cluster.apply(store.batch("hung"), ns)
        failed_hand_off_ran_as_a_job(cluster, store, ns, "hung", f"did not answer within {TIMEOUT} s")
    finally:
        os.killpg(pgid, signal.SIGCONT)
    wait_for("the resumed server refusing the expired attempt",
             lambda: 'spatialforge_serve_batch_runs_total{action="expired"} 1.0' in httpx.get(url + "/metrics").text,
             timeouts.MEDIUM)
    assert_once(cluster, store, ns, "hung", status(cluster, "depthbatch", "hung", ns))


def _server_sockets(url: str) -> list[tuple[str, int]]:
    """(TCP state, bytes received and not yet read) of every connection the kernel holds for the
    server's address: they exist, and take data, while the server process is stopped."""
    host, port = url.split("//")[1].rsplit(":", 1)
    local = f"{int.from_bytes(bytes(map(int, host.split('.'))), 'little'):08X}:{int(port):04X}"
    out = []
    for line in Path("/proc/net/tcp").read_text().splitlines()[1:]:
        fields = line.split()
        if fields[1] == local and fields[3] != "0A":  # not the listening socket
            out.append((fields[3], int(fields[4].split(":")[1], 16)))
    return out


def test_an_operator_killed_mid_hand_off_does_not_run_the_batch_twice(cluster: Cluster, operator: OperatorProcess,
                                                                      store: Store, namespace: str) -> None:
    """The replica is frozen before the batch exists, so both POSTs wait for it in the kernel: the
    operator is SIGKILLed once its POST is delivered (bytes in the server's socket), the next one
    posts the same attempt again, and only then the replica resumes: it reads both, runs the
    attempt once and answers the second from the first."""
    ns = namespace
    url = pool_with_replica(cluster, ns, "warm")
    pgid = os.getpgid(_server_pid(url))
    os.killpg(pgid, signal.SIGSTOP)
    try:
        cluster.apply(store.batch("restart"), ns)
        record = wait_for("the attempt recorded", lambda: hand_off(cluster, ns, "restart"), timeouts.MEDIUM)
        wait_for("the first POST delivered", lambda: any(rx for _, rx in _server_sockets(url)), timeouts.MEDIUM,
                 interval=0.05)
        operator.kill()
        operator.start()
        wait_for("the restarted operator's POST delivered beside the first",
                 lambda: sum(1 for _, rx in _server_sockets(url) if rx) >= 2, timeouts.MEDIUM, interval=0.05)
    finally:
        os.killpg(pgid, signal.SIGCONT)
    st = finished(cluster, ns, "restart")
    assert st["reason"] == "RunByPool" and "jobName" not in st and not cluster.list("jobs", ns)
    assert hand_off(cluster, ns, "restart") == record  # same attempt, never failed
    metrics = httpx.get(url + "/metrics").text
    assert 'spatialforge_serve_batch_runs_total{action="started"} 1.0' in metrics
    assert 'spatialforge_serve_batch_runs_total{action="repeated"} 1.0' in metrics
    assert_once(cluster, store, ns, "restart", st)


def test_an_operator_killed_between_recording_and_posting_resumes_the_attempt(
        cluster: Cluster, operator: OperatorProcess, store: Store, namespace: str) -> None:
    """The state a SIGKILL right after the record leaves (the attempt on the batch, nothing
    posted), made exactly: the batch is created with the record while no operator runs. The
    next operator posts that attempt (resumed) and the replica, which never saw it, runs it once."""
    ns = namespace
    url = pool_with_replica(cluster, ns, "warm")
    record = {"attempt": "0123456789abcdef", "pool": f"{ns}/warm", "url": url, "started": "2026-01-01T00:00:00Z"}
    batch = store.batch("recorded")
    batch["metadata"].setdefault("annotations", {})[HAND_OFF] = json.dumps(record)
    operator.stop()
    try:
        cluster.apply(batch, ns)
    finally:
        operator.start()
    st = finished(cluster, ns, "recorded")
    assert st["reason"] == "RunByPool" and "jobName" not in st and not cluster.list("jobs", ns)
    assert hand_off(cluster, ns, "recorded") == record
    metrics = httpx.get(url + "/metrics").text
    assert 'spatialforge_serve_batch_runs_total{action="started"} 1.0' in metrics
    assert 'action="repeated"' not in metrics
    assert_once(cluster, store, ns, "recorded", st)


@pytest.mark.usefixtures("quota")
def test_a_pool_the_operator_may_not_manage_holds_no_gpus(cluster: Cluster, operator: OperatorProcess,
                                                          namespace: str, behaviour: Behaviour) -> None:
    """Creating the pool's Deployment is refused with 403 (an admission policy with reason
    Forbidden, as RBAC would): condition Forbidden, no replicas, and its GPUs go to a Job."""
    ns = namespace
    behaviour.set(ns, seconds=3600)  # runner pods run, simulated, until deleted
    set_quota(cluster, gpuBudget="2")
    policy = f"deny-pools-{ns}"
    cluster.apply({"apiVersion": "admissionregistration.k8s.io/v1", "kind": "ValidatingAdmissionPolicy",
                   "metadata": {"name": policy},
                   "spec": {"failurePolicy": "Fail", "matchConstraints": {"resourceRules": [
                       {"apiGroups": ["apps"], "apiVersions": ["v1"], "operations": ["CREATE"],
                        "resources": ["deployments"]}]},
                       "validations": [{"expression": "false", "reason": "Forbidden",
                                        "message": "pools are not allowed here"}]}})
    cluster.apply({"apiVersion": "admissionregistration.k8s.io/v1", "kind": "ValidatingAdmissionPolicyBinding",
                   "metadata": {"name": policy},
                   "spec": {"policyName": policy, "validationActions": ["Deny"],
                            "matchResources": {"namespaceSelector": {"matchLabels": {
                                "kubernetes.io/metadata.name": ns}}}}})
    probe = ["create", "deployment", "probe", "--image=none", "-n", ns, "--dry-run=server"]
    wait_for("the policy in force", lambda: "pools are not allowed here" in cluster.kubectl(*probe, check=False).stderr,
             timeouts.MEDIUM)
    try:
        cluster.apply(depth_pool("denied", gpusPerReplica=1, replicas=2), ns)
        st = wait_for("Forbidden", lambda: (s := status(cluster, "depthpool", "denied", ns)).get("reason") == "Forbidden"
                      and s, timeouts.MEDIUM)
        ready = condition(st, "Ready")
        assert ready["status"] == "False" and "may not create" in ready["message"]
        assert st["replicas"] == 0 and st["gpus"] == 0
        assert cluster.get("deployment", "spatialforge-pool-denied", ns) is None
        cluster.apply(depth_batch("wide", gpus=2), ns)  # the whole budget: admitted only if the pool holds none
        wait_for("wide admitted", lambda: status(cluster, "depthbatch", "wide", ns).get("phase") == "Running",
                 timeouts.MEDIUM)
    finally:
        cluster.kubectl("delete", "validatingadmissionpolicybinding", policy, "--ignore-not-found")
        cluster.kubectl("delete", "validatingadmissionpolicy", policy, "--ignore-not-found")


def test_a_pool_run_the_operator_gave_up_on_never_publishes_beside_the_job(
        cluster: Cluster, strict_operator: OperatorProcess, store: Store, namespace: str) -> None:
    """The run starts before the deadline and the replica freezes mid-run (SIGSTOP as soon as it
    counts the run started: the stage has not even listed its inputs). The operator gives up, a
    Job runs and publishes the batch; resumed, the replica finishes its run but may not publish
    (its deadline has passed, the Job holds the batch's claim): the outputs stay written once."""
    ns = namespace
    url = pool_with_replica(cluster, ns, "late")
    pgid = os.getpgid(_server_pid(url))
    started = 'spatialforge_serve_batch_runs_total{action="started"} 1.0'
    cluster.apply(store.batch("late"), ns)
    try:
        wait_for("the replica starting the run", lambda: started in httpx.get(url + "/metrics", timeout=2).text,
                 timeouts.MEDIUM, interval=0.01)
        os.killpg(pgid, signal.SIGSTOP)
        if store.versions(ns, "late"):
            pytest.fail("the replica published before it could be frozen; the interleaving was not reached")
        failed_hand_off_ran_as_a_job(cluster, store, ns, "late", f"did not answer within {TIMEOUT} s")
    finally:
        os.killpg(pgid, signal.SIGCONT)
    wait_for("the resumed replica publishing nothing",
             lambda: 'spatialforge_serve_batch_runs_total{action="fenced"} 1.0' in httpx.get(url + "/metrics").text,
             timeouts.MEDIUM)
    assert_once(cluster, store, ns, "late", status(cluster, "depthbatch", "late", ns))
    uid = cluster.get("depthbatch", "late", ns)["metadata"]["uid"]
    claim = store.s3.get_object(Bucket=store.bucket, Key=f"out/{ns}/.claims/late/{uid}/shard-00000")["Body"].read()
    assert claim == b"job"
    staging = store.s3.list_objects_v2(Bucket=store.bucket, Prefix=f"out/{ns}/late/.staging/")
    assert staging.get("KeyCount", 0) == 0, staging.get("Contents")  # the fenced run removed what it staged
