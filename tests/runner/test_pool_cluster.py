"""DepthPool on the local control plane: the operator's Deployment and Service, the node agent
running real depth servers on their own pod IPs, the endpointslice controller publishing them,
and the GPU budget shared with Jobs. Nothing simulated but the GPU (and, in the budget test,
the servers)."""

from __future__ import annotations

import io
import json
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pytest
from PIL import Image

from spatialforge.devcluster.operator_process import OperatorProcess
from spatialforge.devcluster.plane import SYSTEM_NAMESPACE, Cluster, wait_for
from tests import timeouts
from tests.conftest import RUNNER_SECRET, Behaviour
from tests.factories import depth_batch
from tests.integration.test_operator_lifecycle import status

pytestmark = [pytest.mark.e2e, pytest.mark.slow]
QUOTAS = "spatialforge-quotas"
SERVE = timeouts.LONG  # CPU servers load the tiny model and warm up, three at a time on two cores


def depth_pool(name: str, **spec: Any) -> dict[str, Any]:
    return {"apiVersion": "spatialforge.io/v1alpha1", "kind": "DepthPool", "metadata": {"name": name},
            "spec": {"gpusPerReplica": 0, "replicas": 1, "maxReplicas": 3, "maxWaitMs": 2, "backend": "torch", **spec}}


def ready_addresses(cluster: Cluster, ns: str, pool: str) -> list[str]:
    """http://ip:port of every ready endpoint of the pool's Service, as the front end finds them."""
    slices = cluster.list("endpointslices.discovery.k8s.io", ns, f"kubernetes.io/service-name=spatialforge-pool-{pool}")
    out = []
    for s in slices:
        port = next((p["port"] for p in s.get("ports") or [] if p.get("name") == "http"), None)
        if port is None:  # a slice without endpoints has no ports
            continue
        for ep in s.get("endpoints") or []:
            if (ep.get("conditions") or {}).get("ready"):
                out += [f"http://{addr}:{port}" for addr in ep["addresses"]]
    return sorted(out)


def serving(cluster: Cluster, ns: str, pool: str, n: int) -> list[str] | None:
    """The pool's ready endpoints once there are exactly n, each answering /readyz with 200,
    and the pool's status agreeing; else None."""
    urls = ready_addresses(cluster, ns, pool)
    st = status(cluster, "depthpool", pool, ns)
    if len(urls) != n or st.get("readyReplicas") != n or st.get("endpoints") != n:
        return None
    try:
        if not all(httpx.get(f"{u}/readyz", timeout=2).status_code == 200 for u in urls):
            return None
    except httpx.HTTPError:
        return None
    return urls


def pool_pods(cluster: Cluster, ns: str, pool: str) -> list[dict[str, Any]]:
    return [p for p in cluster.list("pods", ns, f"spatialforge.io/pool={pool}")
            if not p["metadata"].get("deletionTimestamp")]


@pytest.fixture
def serving_ns(cluster: Cluster, operator: OperatorProcess, namespace: str, behaviour: Behaviour,
               model_dir: Path) -> str:
    """A namespace whose pods run as real processes, with the tiny model on CPU."""
    secret = {"apiVersion": "v1", "kind": "Secret", "metadata": {"name": RUNNER_SECRET},
              "stringData": {"SPATIALFORGE_MODEL_DIR": str(model_dir), "HF_HUB_OFFLINE": "1",
                             "SPATIALFORGE_DEVICE": "cpu", "OMP_NUM_THREADS": "1"}}
    cluster.apply(secret, namespace)
    behaviour.set(namespace, mode="process")
    return namespace


def test_pool_scales_through_the_scale_subresource_and_servers_follow(cluster: Cluster, serving_ns: str) -> None:
    ns = serving_ns
    cluster.apply(depth_pool("fast"), ns)
    pod = wait_for("a pool pod with an IP", lambda: next((p for p in pool_pods(cluster, ns, "fast")
                                                          if (p.get("status") or {}).get("podIP")), None), SERVE)
    if pod["status"]["podIP"].startswith("127."):
        pytest.fail("the node agent gives pods loopback addresses, which EndpointSlices refuse: run the plane "
                    "(hack/cluster.sh up) as root or with CAP_NET_ADMIN and iproute2, so it can put pod IPs "
                    "(198.18.0.0/15) on lo (spatialforge/devcluster/podnet.py)", pytrace=False)
    one = wait_for("one ready server", lambda: serving(cluster, ns, "fast", 1), SERVE)
    # Its own address and the declared port: no remapping for a pod listening on its pod IP.
    assert one[0].startswith("http://198.1") and one[0].endswith(":8080")
    st = status(cluster, "depthpool", "fast", ns)
    assert st["selector"] == "app.kubernetes.io/component=depth-pool,spatialforge.io/pool=fast"
    assert st["service"] == "spatialforge-pool-fast" and st["gpus"] == 0
    ready = {c["type"]: c for c in st["conditions"]}["Ready"]
    assert ready["status"] == "True" and ready["reason"] == "AllReplicasReady"
    assert st["observedGeneration"] == cluster.get("depthpool", "fast", ns)["metadata"]["generation"]

    buf = io.BytesIO()
    Image.fromarray(np.random.default_rng(0).integers(0, 255, (48, 64, 3), dtype=np.uint8)).save(buf, "PNG")
    answer = httpx.post(f"{one[0]}/v1/depth", content=buf.getvalue(), params={"format": "json", "preview": "0"},
                        timeout=30)
    assert answer.status_code == 200, answer.text

    cluster.kubectl("scale", "depthpool/fast", "-n", ns, "--replicas=3")
    three = wait_for("three ready servers", lambda: serving(cluster, ns, "fast", 3), SERVE)
    assert len(set(three)) == 3 and one[0] in three
    scale = json.loads(cluster.kubectl("get", "--raw",
                                       f"/apis/spatialforge.io/v1alpha1/namespaces/{ns}/depthpools/fast/scale").stdout)
    assert scale["spec"]["replicas"] == 3 and scale["status"]["replicas"] == 3
    assert scale["status"]["selector"] == "app.kubernetes.io/component=depth-pool,spatialforge.io/pool=fast"

    # Above maxReplicas: clamped to it. Then down to one: the other servers stop.
    cluster.kubectl("scale", "depthpool/fast", "-n", ns, "--replicas=9")
    wait_for("wanted clamped to max", lambda: status(cluster, "depthpool", "fast", ns).get("wantedReplicas") == 3,
             timeouts.SHORT)
    cluster.kubectl("scale", "depthpool/fast", "-n", ns, "--replicas=1")
    wait_for("one server left", lambda: serving(cluster, ns, "fast", 1) and len(pool_pods(cluster, ns, "fast")) == 1,
             SERVE)


def set_quota(cluster: Cluster, **data: str) -> None:
    cluster.kubectl("delete", "configmap", QUOTAS, "-n", SYSTEM_NAMESPACE, "--ignore-not-found")
    cluster.apply({"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": QUOTAS, "namespace": SYSTEM_NAMESPACE},
                   "data": data})


@pytest.fixture
def quota(cluster: Cluster) -> Any:
    yield
    cluster.kubectl("delete", "configmap", QUOTAS, "-n", SYSTEM_NAMESPACE, "--ignore-not-found")


def condition(st: dict[str, Any], type_: str) -> dict[str, Any]:
    return next((c for c in st.get("conditions") or [] if c["type"] == type_), {})


def test_pool_gpus_hold_back_jobs_and_the_budget_clamps_the_pool(cluster: Cluster, operator: OperatorProcess,
                                                                 namespace: str, behaviour: Behaviour,
                                                                 quota: None) -> None:
    ns = namespace
    behaviour.set(ns, seconds=3600)  # pods (replicas and runners) run, simulated, until deleted
    set_quota(cluster, gpuBudget="2")
    cluster.apply(depth_pool("gpu", gpusPerReplica=1, replicas=3), ns)

    def clamped_to(n: int) -> dict[str, Any] | None:
        st = status(cluster, "depthpool", "gpu", ns)
        limited = condition(st, "BudgetLimited")
        deploy = cluster.get("deployment", "spatialforge-pool-gpu", ns)
        ok = (st.get("replicas") == n and st.get("gpus") == n and st.get("wantedReplicas") == 3
              and limited.get("status") == "True" and limited.get("reason") == "ClusterBudget"
              and deploy is not None and deploy["spec"]["replicas"] == n)
        return st if ok else None

    st = wait_for("the pool clamped to the budget", lambda: clamped_to(2), timeouts.SHORT)
    assert st["reason"] == "ClusterBudget" and "2 of 3 replicas" in st["message"]
    limits = cluster.get("deployment", "spatialforge-pool-gpu", ns)["spec"]["template"]["spec"]["containers"][0]
    assert limits["resources"]["limits"] == {"nvidia.com/gpu": "1"}

    # The pool's GPUs are held: a one-GPU batch queues, and a two-GPU batch queues too
    # (it fits the budget, so it is not impossible, however many GPUs the pool holds).
    cluster.apply(depth_batch("small", gpus=1), ns)
    cluster.apply(depth_batch("wide", gpus=2), ns)
    for name in ("small", "wide"):
        queued = wait_for(f"{name} queued", lambda n=name: (s := status(cluster, "depthbatch", n, ns)).get(
            "phase") == "Queued" and s, timeouts.SHORT)
        assert queued["reason"] == "QuotaExceeded" and "cluster uses 2 of 2 GPUs" in queued["message"]
    assert not cluster.list("jobs", ns)

    # Scaled down to one replica, the pool gives a GPU back and the head of the queue runs.
    cluster.kubectl("scale", "depthpool/gpu", "-n", ns, "--replicas=1")
    wait_for("small admitted", lambda: status(cluster, "depthbatch", "small", ns).get("phase") == "Running",
             timeouts.MEDIUM)
    st = wait_for("pool within budget", lambda: (s := status(cluster, "depthpool", "gpu", ns)).get("replicas") == 1
                  and condition(s, "BudgetLimited").get("status") == "False" and s, timeouts.SHORT)
    assert st["gpus"] == 1
    assert status(cluster, "depthbatch", "wide", ns)["phase"] == "Queued"

    # Asked for three again, the pool gets only what the running batch leaves: still one.
    cluster.kubectl("scale", "depthpool/gpu", "-n", ns, "--replicas=3")
    st = wait_for("the pool clamped again", lambda: clamped_to(1), timeouts.SHORT)
    assert "1 of 3 replicas" in st["message"]
    assert len(pool_pods(cluster, ns, "gpu")) <= 1


def test_a_small_depth_batch_is_run_by_a_warm_pool_without_a_job(cluster: Cluster, serving_ns: str,
                                                                  minio_env: dict[str, str], model_dir: Path) -> None:
    import boto3

    ns = serving_ns
    cluster.apply({"apiVersion": "v1", "kind": "Secret", "metadata": {"name": RUNNER_SECRET},
                   "stringData": {**minio_env, "SPATIALFORGE_MODEL_DIR": str(model_dir), "HF_HUB_OFFLINE": "1",
                                  "SPATIALFORGE_DEVICE": "cpu", "OMP_NUM_THREADS": "1"}}, ns)
    s3 = boto3.client("s3", endpoint_url=minio_env["SPATIALFORGE_S3_ENDPOINT"],
                      aws_access_key_id=minio_env["AWS_ACCESS_KEY_ID"],
                      aws_secret_access_key=minio_env["AWS_SECRET_ACCESS_KEY"], region_name="us-east-1")
    bucket = f"pool-{ns}"
    s3.create_bucket(Bucket=bucket)
    for i in range(2):
        buf = io.BytesIO()
        Image.fromarray(np.random.default_rng(i).integers(0, 255, (48, 64, 3), dtype=np.uint8)).save(buf, "PNG")
        s3.put_object(Bucket=bucket, Key=f"in/img-{i}.png", Body=buf.getvalue())
    cluster.apply(depth_pool("warm"), ns)
    wait_for("a ready server", lambda: serving(cluster, ns, "warm", 1), SERVE)

    cluster.apply(depth_batch("quick", gpus=0, inputs=[f"s3://{bucket}/in/img-0.png", f"s3://{bucket}/in/img-1.png"],
                              output={"uri": f"s3://{bucket}/out"}), ns)
    st = wait_for("Succeeded", lambda: (s := status(cluster, "depthbatch", "quick", ns)).get("phase") == "Succeeded"
                  and s, timeouts.MEDIUM)
    assert st["reason"] == "RunByPool" and "pool " + ns + "/warm" in st["message"]
    assert st["progress"]["done"] == st["progress"]["total"] == 2 and st["progressSummary"] == "2/2"
    assert st["manifestUri"] == f"s3://{bucket}/out/{ns}/quick/shard-00000/manifest.json"
    assert "jobName" not in st and not cluster.list("jobs", ns)
    written = [o["Key"] for o in s3.list_objects_v2(Bucket=bucket, Prefix=f"out/{ns}/quick/")["Contents"]]
    assert sorted(Path(k).name for k in written if k.endswith(".png")) == ["img-0.depth.png", "img-1.depth.png"]
    manifest = json.loads(s3.get_object(Bucket=bucket, Key=f"out/{ns}/quick/shard-00000/manifest.json")["Body"].read())
    assert manifest["summary"]

    # Invalid input fails the batch as a runner would (InvalidInput), once, without a Job.
    s3.put_object(Bucket=bucket, Key="in/bad.jpg", Body=b"not an image at all")
    cluster.apply(depth_batch("bad", gpus=0, inputs=[f"s3://{bucket}/in/bad.jpg"], output={"uri": f"s3://{bucket}/out"}),
                  ns)
    st = wait_for("Failed", lambda: (s := status(cluster, "depthbatch", "bad", ns)).get("phase") == "Failed" and s,
                  timeouts.MEDIUM)
    assert st["reason"] == "InvalidInput" and not cluster.list("jobs", ns)
