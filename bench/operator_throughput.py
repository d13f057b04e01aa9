"""Operator throughput on the local control plane.

    python bench/operator_throughput.py [--count N]

In one run, on the same plane: (1) raw batch/v1 Job creates/s from an async client at the
operator's concurrency, then (2) N DepthBatch resources created as fast as possible and the
time from each resource's creation to its Job's creation. Both sides create suspended Jobs
(the resources name a Kueue queue), so no pods compete for the two cores. Reports p50/p99
resource-to-Job latency, the operator's throughput as a ratio to the raw Job rate, and the
operator's peak RSS. The final line is JSON.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import statistics
import subprocess
import sys
import time
import uuid
from pathlib import Path

from kubernetes_asyncio import client, config

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from tests.cluster import STATE, start_cluster  # noqa: E402
from tests.operator_process import OperatorProcess  # noqa: E402

CONCURRENCY = 16


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(round(q / 100 * (len(ordered) - 1))))]


def rss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):  # peak resident set
            return int(line.split()[1]) / 1024
    return 0.0


async def create_all(make, count: int) -> float:
    sem = asyncio.Semaphore(CONCURRENCY)

    async def one(i: int) -> None:
        async with sem:
            await make(i)

    start = time.perf_counter()
    await asyncio.gather(*(one(i) for i in range(count)))
    return time.perf_counter() - start


def job_body(ns: str, i: int) -> dict:
    return {"apiVersion": "batch/v1", "kind": "Job", "metadata": {"name": f"raw-{i}", "namespace": ns},
            "spec": {"suspend": True, "template": {"spec": {"restartPolicy": "Never", "containers": [
                {"name": "c", "image": "spatialforge/runner:bench", "command": ["true"]}]}}}}


def resource_body(i: int) -> dict:
    return {"apiVersion": "spatialforge.io/v1alpha1", "kind": "DepthBatch", "metadata": {"name": f"bench-{i}"},
            "spec": {"inputs": ["s3://bench-bucket/in/"], "output": {"uri": "s3://bench-bucket/out"},
                     "placement": {"gpus": 0}, "queueName": "bench"}}


async def main(count: int) -> dict:
    plane, _ = start_cluster()
    api = await config.new_client_from_config(config_file=str(plane.kubeconfig))
    api.configuration.connection_pool_maxsize = 64
    core, batch, custom = client.CoreV1Api(api), client.BatchV1Api(api), client.CustomObjectsApi(api)
    run = uuid.uuid4().hex[:6]
    raw_ns, op_ns = f"bench-raw-{run}", f"bench-op-{run}"
    for ns in (raw_ns, op_ns, "spatialforge-system"):
        try:
            await core.create_namespace({"metadata": {"name": ns}})
        except client.ApiException as exc:
            if exc.status != 409:
                raise

    # (1) Raw Job creates, suspended so no pods compete for the CPU.
    raw_seconds = await create_all(lambda i: batch.create_namespaced_job(raw_ns, job_body(raw_ns, i)), count)
    raw_rate = count / raw_seconds

    # (2) The operator. Resources name a Kueue queue, so their Jobs are created suspended too:
    # the same object and the same work for the API server as the raw run.
    op = OperatorProcess(plane.kubeconfig, STATE / "logs", name="bench-operator",
                         SPATIALFORGE_WORKERS=str(CONCURRENCY))
    op.start()
    await asyncio.sleep(0)
    while True:
        try:
            lease = await client.CoordinationV1Api(api).read_namespaced_lease("spatialforge-operator", "spatialforge-system")
            if lease.spec.holder_identity and lease.spec.holder_identity.startswith("bench-operator"):
                break
        except client.ApiException:
            pass
        await asyncio.sleep(0.2)
    await asyncio.sleep(2)  # start-up listing done
    created: dict[str, float] = {}
    job_seen: dict[str, float] = {}

    async def watch_jobs() -> None:
        w_rv = None
        while len(job_seen) < count:
            resp = await batch.list_namespaced_job(op_ns, watch=True, resource_version=w_rv, timeout_seconds=60,
                                                   _preload_content=False)
            async with resp:
                while line := await resp.content.readline():
                    ev = json.loads(line)
                    obj = ev["object"]
                    w_rv = obj["metadata"]["resourceVersion"]
                    if ev["type"] == "ADDED":
                        name = obj["metadata"]["labels"].get("spatialforge.io/name")
                        job_seen.setdefault(name, time.perf_counter())
                    if len(job_seen) >= count:
                        return

    watcher = asyncio.create_task(watch_jobs())
    await asyncio.sleep(0.5)

    async def make(i: int) -> None:
        created[f"bench-{i}"] = time.perf_counter()
        await custom.create_namespaced_custom_object("spatialforge.io", "v1alpha1", op_ns, "depthbatches",
                                                     resource_body(i))

    start = time.perf_counter()
    cr_seconds = await create_all(make, count)
    await asyncio.wait_for(watcher, timeout=max(120, count / 5))
    op_seconds = max(job_seen.values()) - start
    latencies = [job_seen[n] - created[n] for n in created]
    peak = rss_mb(op.proc.pid)
    cpu = sum(float(x) for x in Path(f"/proc/{op.proc.pid}/stat").read_text().split()[13:15]) / 100
    op.stop()
    for ns in (raw_ns, op_ns):
        await core.delete_namespace(ns)
    await api.close()
    return {
        "count": count,
        "raw_job_creates_per_s": round(raw_rate, 1),
        "resource_creates_per_s": round(count / cr_seconds, 1),
        "operator_jobs_per_s": round(count / op_seconds, 1),
        "throughput_ratio": round((count / op_seconds) / raw_rate, 3),
        "latency_p50_s": round(statistics.median(latencies), 3),
        "latency_p99_s": round(percentile(latencies, 99), 3),
        "operator_peak_rss_mb": round(peak, 1),
        "operator_cpu_s": round(cpu, 1),
    }


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--count", type=int, default=1000)
    args = parser.parse_args()
    result = asyncio.run(main(args.count))
    for k, v in result.items():
        print(f"{k:>24}: {v}")
    print(json.dumps(result))
