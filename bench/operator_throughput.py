"""Operator throughput and latency on the local control plane.

    python bench/operator_throughput.py [--count N] [--rate R] [--latency-count M]

One run, one plane, three phases, all creating suspended Jobs so no pods compete for the
CPU (the resources name a Kueue queue, which makes the operator create its Jobs suspended):
  1. raw: N batch/v1 Jobs created by an async client at the operator's concurrency -> Jobs/s;
  2. drain: N resources created while the operator is stopped, then the operator started;
     Jobs/s from its start to the N-th Job -> its throughput, and the ratio to (1);
  3. latency: the operator running, min(N, M) resources created at R per second; the time from
     each create request to the appearance of its Job -> p50 and p99 (the headline figure);
     also the create call's own p99 and the latency counted from the API server's answer, which
     separate the API server's queueing on this shared machine from the operator's part.
Also the operator's peak RSS. The final line is JSON.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import statistics
import time
import uuid
from pathlib import Path

from kubernetes_asyncio import client, config

from spatialforge.devcluster.operator_process import OperatorProcess
from spatialforge.devcluster.plane import STATE, start_cluster
from spatialforge.kubeclient import tuned
from spatialforge.operator.kube import Kube


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


async def watch_jobs(batch: client.BatchV1Api, namespace: str, count: int) -> dict[str, float]:
    """When each resource's Job first appeared (by the resource-name label)."""
    seen: dict[str, float] = {}
    rv = None
    while len(seen) < count:
        resp = await batch.list_namespaced_job(namespace, watch=True, resource_version=rv, timeout_seconds=60,
                                               allow_watch_bookmarks=True, _preload_content=False)
        async with resp:
            while line := await resp.content.readline():
                event = json.loads(line)
                obj = event["object"]
                rv = obj["metadata"]["resourceVersion"]
                if event["type"] == "ADDED":
                    seen.setdefault(obj["metadata"]["labels"]["spatialforge.io/name"], time.perf_counter())
                if len(seen) >= count:
                    break
    return seen


def job_body(ns: str, i: int) -> dict:
    return {"apiVersion": "batch/v1", "kind": "Job", "metadata": {"name": f"raw-{i}", "namespace": ns},
            "spec": {"suspend": True, "template": {"spec": {"restartPolicy": "Never", "containers": [
                {"name": "c", "image": "spatialforge/runner:bench", "command": ["true"]}]}}}}


def resource_body(i: int) -> dict:
    return {"apiVersion": "spatialforge.io/v1alpha1", "kind": "DepthBatch", "metadata": {"name": f"bench-{i}"},
            "spec": {"inputs": ["s3://bench-bucket/in/"], "output": {"uri": "s3://bench-bucket/out"},
                     "placement": {"gpus": 0}, "queueName": "bench"}}


async def main(count: int, rate: float, latency_count: int) -> dict:
    plane, _ = start_cluster()
    # The raw baseline uses the same client tuning as the operator (see spatialforge/kubeclient.py).
    api = tuned(await config.new_client_from_config(config_file=str(plane.kubeconfig)))
    api.configuration.connection_pool_maxsize = 64
    missing = await Kube(api).missing_crds()
    if missing:
        await api.close()
        raise SystemExit(f"bench: the plane at {STATE} serves no {', '.join(missing)}; install them with "
                         f"`KUBECONFIG={plane.kubeconfig} kubectl apply -f crds/` and run the bench again")
    core, batch, custom = client.CoreV1Api(api), client.BatchV1Api(api), client.CustomObjectsApi(api)
    run = uuid.uuid4().hex[:6]
    raw_ns, drain_ns, lat_ns = f"bench-raw-{run}", f"bench-drain-{run}", f"bench-lat-{run}"
    for ns in (raw_ns, drain_ns, lat_ns, "spatialforge-system"):
        try:
            await core.create_namespace({"metadata": {"name": ns}})
        except client.ApiException as exc:
            if exc.status != 409:
                raise

    # (1) Raw Job creates, suspended so no pods compete for the CPU.
    raw_seconds = await create_all(lambda i: batch.create_namespaced_job(raw_ns, job_body(raw_ns, i)), count)
    raw_rate = count / raw_seconds

    # (2) Drain: the operator finds N resources waiting and creates their Jobs.
    await create_all(lambda i: custom.create_namespaced_custom_object(
        "spatialforge.io", "v1alpha1", drain_ns, "depthbatches", resource_body(i)), count)
    drain_watch = asyncio.create_task(watch_jobs(batch, drain_ns, count))
    op = OperatorProcess(plane.kubeconfig, STATE / "logs", name="bench-operator",
                         SPATIALFORGE_WORKERS=str(CONCURRENCY))
    op.start()
    started = time.perf_counter()
    drain_seen = await asyncio.wait_for(drain_watch, timeout=max(300, count / 5))
    # Sustained rate from the first Job to the last (process start-up is not throughput).
    op_rate = (count - 1) / (max(drain_seen.values()) - min(drain_seen.values()))
    startup_s = min(drain_seen.values()) - started

    # Let the operator finish its bookkeeping of phase 2 (finalizers, status) first.
    for _ in range(600):
        items = (await custom.list_namespaced_custom_object("spatialforge.io", "v1alpha1", drain_ns,
                                                            "depthbatches"))["items"]
        if all((i.get("status") or {}).get("jobName") for i in items):
            break
        await asyncio.sleep(1)

    # (3) Latency at a steady arrival rate, with the operator warm.
    lat_count = min(count, latency_count)
    seen_task = asyncio.create_task(watch_jobs(batch, lat_ns, lat_count))
    await asyncio.sleep(0.5)
    created: dict[str, float] = {}  # just before the create request
    answered: dict[str, float] = {}  # when the API server answered it (the resource exists)
    interval = 1.0 / rate
    t0 = time.perf_counter()

    async def make(i: int) -> None:
        await asyncio.sleep(max(0.0, t0 + i * interval - time.perf_counter()))
        created[f"bench-{i}"] = time.perf_counter()
        await custom.create_namespaced_custom_object("spatialforge.io", "v1alpha1", lat_ns, "depthbatches",
                                                     resource_body(i))
        answered[f"bench-{i}"] = time.perf_counter()

    await asyncio.gather(*(make(i) for i in range(lat_count)))
    seen = await asyncio.wait_for(seen_task, timeout=max(300, lat_count / 5))
    latencies = [seen[n] - created[n] for n in created]
    create_calls = [answered[n] - created[n] for n in created]
    after_answer = [max(0.0, seen[n] - answered[n]) for n in created]
    peak = rss_mb(op.proc.pid)
    cpu = sum(float(x) for x in Path(f"/proc/{op.proc.pid}/stat").read_text().split()[13:15]) / 100
    # Clean up while the operator runs: its finalizer must release the resources.
    for ns in (raw_ns, drain_ns, lat_ns):
        await core.delete_namespace(ns)
    for _ in range(600):
        if not any([(await custom.list_namespaced_custom_object("spatialforge.io", "v1alpha1", ns, "depthbatches",
                                                                limit=1))["items"] for ns in (drain_ns, lat_ns)]):
            break
        await asyncio.sleep(1)
    op.stop()
    await api.close()
    return {
        "count": count,
        "raw_job_creates_per_s": round(raw_rate, 1),
        "operator_jobs_per_s": round(op_rate, 1),
        "throughput_ratio": round(op_rate / raw_rate, 3),
        "operator_first_job_after_start_s": round(startup_s, 2),
        "arrival_rate_per_s": rate,
        "latency_count": lat_count,
        "latency_p50_s": round(statistics.median(latencies), 3),
        "latency_p99_s": round(percentile(latencies, 99), 3),
        "create_call_p99_s": round(percentile(create_calls, 99), 3),
        "latency_after_create_answered_p50_s": round(statistics.median(after_answer), 3),
        "latency_after_create_answered_p99_s": round(percentile(after_answer, 99), 3),
        "operator_peak_rss_mb": round(peak, 1),
        "operator_cpu_s": round(cpu, 1),
    }


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--count", type=int, default=1000)
    parser.add_argument("--rate", type=float, default=20.0, help="arrival rate of the latency phase")
    parser.add_argument("--latency-count", type=int, default=1000, help="resources in the latency phase (at most --count)")
    args = parser.parse_args()
    result = asyncio.run(main(args.count, args.rate, args.latency_count))
    for k, v in result.items():
        print(f"{k:>24}: {v}")
    print(json.dumps(result))
