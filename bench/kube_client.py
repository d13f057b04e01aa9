"""Client-side CPU per Kubernetes API call, kubernetes_asyncio as shipped vs tuned.

    python bench/kube_client.py [--requests N]

Against the local control plane (started if it is not running): N GETs of one namespace at
16 in flight, once with the library's session (which reads proxy variables and ~/.netrc in a
thread on every request) and once after `spatialforge.kubeclient.tuned`. Prints the process
CPU and the wall time per request for each, and the ratio. Final line: JSON.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import time
from pathlib import Path

from kubernetes_asyncio import client, config

from spatialforge.devcluster.plane import start_cluster
from spatialforge.kubeclient import tuned


async def measure(kubeconfig: Path, tune: bool, requests: int) -> tuple[float, float]:
    api = await config.new_client_from_config(config_file=str(kubeconfig))
    if tune:
        tuned(api)
    core = client.CoreV1Api(api)
    sem = asyncio.Semaphore(16)

    async def one() -> None:
        async with sem:
            resp = await core.read_namespace("default", _preload_content=False)
            async with resp:
                await resp.read()

    try:
        await asyncio.gather(*(one() for _ in range(200)))  # warm up connections
        cpu, wall = time.process_time(), time.perf_counter()
        await asyncio.gather(*(one() for _ in range(requests)))
        return (time.process_time() - cpu) / requests, (time.perf_counter() - wall) / requests
    finally:
        await api.close()


async def main(requests: int) -> dict[str, float]:
    plane, _ = start_cluster()
    plain_cpu, plain_wall = await measure(plane.kubeconfig, False, requests)
    tuned_cpu, tuned_wall = await measure(plane.kubeconfig, True, requests)
    return {"requests": requests,
            "plain_cpu_ms_per_request": round(plain_cpu * 1000, 3), "plain_wall_ms_per_request": round(plain_wall * 1000, 3),
            "tuned_cpu_ms_per_request": round(tuned_cpu * 1000, 3), "tuned_wall_ms_per_request": round(tuned_wall * 1000, 3),
            "cpu_ratio_tuned_to_plain": round(tuned_cpu / plain_cpu, 3)}


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--requests", type=int, default=2000)
    result = asyncio.run(main(parser.parse_args().requests))
    for k, v in result.items():
        print(f"{k:>28}: {v}")
    print(json.dumps(result))
