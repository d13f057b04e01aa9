"""Time to a first depth result on the local plane: a cold one-image DepthBatch (a Job, a runner
process that loads the model) against a warm DepthPool (servers already loaded).

On the session's own plane (spatialforge/devcluster/plane.py), with the operator, MinIO and the tiny model
(CPU), nothing simulated but the GPU:

- job_first_output_s: DepthBatch created -> its first output object exists in MinIO;
- job_succeeded_s: created -> phase Succeeded (manifest written, status updated);
- pool_cold_ready_s: DepthPool created -> first ready endpoint in its EndpointSlices (a cold pool);
- pool_scale_up_s: `kubectl scale` 1 -> 2 -> second ready endpoint;
- handoff_first_output_s / handoff_succeeded_s: the same one-image DepthBatch with the pool
  warm, which the operator hands to it (SPATIALFORGE_POOL_HANDOFF_MAX_IMAGES=4; no Job);
- pool_request_s: with the pool warm, one POST /v1/depth (PNG answer) to an endpoint from its
  EndpointSlices, p50 and p99 over --requests: what a synchronous client waits for a result.

    SPATIALFORGE_TEST_STATE=.local/bench-pool python bench/pool_first_result.py --runs 3

Prints one line per figure, then one JSON line.
"""

from __future__ import annotations

import argparse
import io
import json
import os
import statistics
import subprocess
import tempfile
import time
import uuid
from pathlib import Path

import boto3
import httpx
import numpy as np
from PIL import Image

from spatialforge.devcluster.operator_process import OperatorProcess
from spatialforge.devcluster.plane import BEHAVIOUR_NAMESPACE, STATE, Cluster, start_cluster


REPO = Path(__file__).resolve().parents[1]
SECRET = "spatialforge-objectstore"


def wait(what: str, probe, timeout: float = 300.0, interval: float = 0.05):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        got = probe()
        if got:
            return got
        time.sleep(interval)
    raise SystemExit(f"timed out after {timeout:.0f}s waiting for {what}")


def minio_up(state: Path) -> dict[str, str]:
    env = {**os.environ, "SPATIALFORGE_STATE": str(state)}
    up = subprocess.run(["bash", str(REPO / "hack" / "minio.sh"), "up"], env=env, capture_output=True, text=True,
                        timeout=120)
    if up.returncode != 0:
        raise SystemExit(f"hack/minio.sh up failed (build MinIO with `bash hack/build-tools.sh minio`):\n{up.stderr}")
    out = {}
    for line in up.stdout.splitlines():
        if line.startswith("export "):
            k, _, v = line[len("export "):].partition("=")
            out[k] = v
    return out


def png(seed: int) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(np.random.default_rng(seed).integers(0, 255, (48, 64, 3), dtype=np.uint8)).save(buf, "PNG")
    return buf.getvalue()


def ready_urls(cluster: Cluster, ns: str, pool: str) -> list[str]:
    urls = []
    for s in cluster.list("endpointslices.discovery.k8s.io", ns, f"kubernetes.io/service-name=spatialforge-pool-{pool}"):
        port = next((p["port"] for p in s.get("ports") or [] if p.get("name") == "http"), None)
        for ep in s.get("endpoints") or []:
            if port and (ep.get("conditions") or {}).get("ready"):
                urls += [f"http://{a}:{port}" for a in ep["addresses"]]
    return urls


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--runs", type=int, default=3, help="cold DepthBatches, one after another")
    ap.add_argument("--requests", type=int, default=20, help="synchronous requests to the warm pool")
    args = ap.parse_args()

    from spatialforge.crds.v1alpha1.common import ModelSize
    from spatialforge.runner.models.tiny import build_tiny_model_dir

    cluster, started = start_cluster()
    work = Path(tempfile.mkdtemp(prefix="pool-bench-"))
    models = work / "models"
    build_tiny_model_dir(models, sizes=(ModelSize.small,))
    store = minio_up(work)
    op = OperatorProcess(cluster.kubeconfig, STATE / "logs", name="bench-pool-operator",
                         SPATIALFORGE_RUNNER_ENV_FROM_SECRET=SECRET, SPATIALFORGE_POOL_HANDOFF_MAX_IMAGES="4")
    op.start()
    ns = f"bench-{uuid.uuid4().hex[:6]}"
    results: dict[str, float] = {}
    try:
        cluster.apply({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": ns}})
        cluster.apply({"apiVersion": "v1", "kind": "Secret", "metadata": {"name": SECRET},
                       "stringData": {**store, "SPATIALFORGE_MODEL_DIR": str(models), "HF_HUB_OFFLINE": "1",
                                      "SPATIALFORGE_DEVICE": "cpu", "OMP_NUM_THREADS": "1"}}, ns)
        cm = cluster.get("configmap", "behaviour", BEHAVIOUR_NAMESPACE)
        data = {**((cm or {}).get("data") or {}), ns: json.dumps({"mode": "process"})}
        cluster.apply({"apiVersion": "v1", "kind": "ConfigMap",
                       "metadata": {"name": "behaviour", "namespace": BEHAVIOUR_NAMESPACE}, "data": data})
        s3 = boto3.client("s3", endpoint_url=store["SPATIALFORGE_S3_ENDPOINT"],
                          aws_access_key_id=store["AWS_ACCESS_KEY_ID"],
                          aws_secret_access_key=store["AWS_SECRET_ACCESS_KEY"], region_name="us-east-1")
        bucket = f"bench-{uuid.uuid4().hex[:8]}"
        s3.create_bucket(Bucket=bucket)
        s3.put_object(Bucket=bucket, Key="in/one.png", Body=png(0))

        def one_image_batches(label: str) -> tuple[float, float, str]:
            first, done, reason = [], [], ""
            for i in range(args.runs):
                name = f"{label}-{i}"
                prefix = f"out/{ns}/{name}/"
                body = {"apiVersion": "spatialforge.io/v1alpha1", "kind": "DepthBatch", "metadata": {"name": name},
                        "spec": {"inputs": [f"s3://{bucket}/in/one.png"], "output": {"uri": f"s3://{bucket}/out"},
                                 "placement": {"gpus": 0}, "model": {"size": "small"}}}
                t0 = time.monotonic()
                cluster.apply(body, ns)
                wait("a first output", lambda p=prefix: s3.list_objects_v2(Bucket=bucket, Prefix=p).get("KeyCount", 0),
                     interval=0.05)
                first.append(time.monotonic() - t0)
                st = wait("Succeeded", lambda n=name: (s := (cluster.get("depthbatch", n, ns) or {}).get("status")
                                                       or {}).get("phase") == "Succeeded" and s, interval=0.05)
                done.append(time.monotonic() - t0)
                reason = st.get("reason", "")
            return statistics.median(first), statistics.median(done), reason

        results["job_first_output_s"], results["job_succeeded_s"], _ = one_image_batches("cold")

        pool = {"apiVersion": "spatialforge.io/v1alpha1", "kind": "DepthPool", "metadata": {"name": "warm"},
                "spec": {"gpusPerReplica": 0, "replicas": 1, "maxReplicas": 2, "backend": "torch", "maxWaitMs": 2}}
        t0 = time.monotonic()
        cluster.apply(pool, ns)
        wait("a ready endpoint", lambda: ready_urls(cluster, ns, "warm"), interval=0.1)
        results["pool_cold_ready_s"] = time.monotonic() - t0
        t0 = time.monotonic()
        cluster.kubectl("scale", "depthpool/warm", "-n", ns, "--replicas=2")
        wait("two ready endpoints", lambda: len(ready_urls(cluster, ns, "warm")) == 2, interval=0.1)
        results["pool_scale_up_s"] = time.monotonic() - t0

        results["handoff_first_output_s"], results["handoff_succeeded_s"], reason = one_image_batches("warm")
        if reason != "RunByPool":
            raise SystemExit(f"the warm-pool batches were not handed off (reason {reason})")
        image = png(0)
        times = []
        urls = ready_urls(cluster, ns, "warm")  # a client watching the slices has them at hand
        with httpx.Client(timeout=60) as http:
            for i in range(args.requests):
                t0 = time.monotonic()
                r = http.post(f"{urls[i % len(urls)]}/v1/depth", content=image, params={"format": "png"})
                r.raise_for_status()
                times.append(time.monotonic() - t0)
        results["pool_request_s"] = statistics.median(times)
        results["pool_request_p99_s"] = float(np.percentile(times, 99))
    finally:
        cluster.kubectl("delete", "namespace", ns, "--wait=false", check=False)
        op.stop()
        subprocess.run(["bash", str(REPO / "hack" / "minio.sh"), "down"], capture_output=True,
                       env={**os.environ, "SPATIALFORGE_STATE": str(work)})
        if started:
            subprocess.run(["bash", str(REPO / "hack" / "cluster.sh"), "down"], capture_output=True,
                           env={**os.environ, "SPATIALFORGE_STATE": str(STATE), "SF_PORTS": "free"})
    for k, v in results.items():
        print(f"{k:24s} {v:8.3f}")
    print(json.dumps({"bench": "pool_first_result", "runs": args.runs, "requests": args.requests,
                      **{k: round(v, 3) for k, v in results.items()}}))


if __name__ == "__main__":
    main()
