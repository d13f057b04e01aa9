"""The real stack in front of a depth server, for bench/sync_depth.py --front-end.

The local control plane (hack/cluster.sh), Redis, MinIO and stripe-mock (hack/*.sh, on free
ports under $SPATIALFORGE_STATE/bench-sync), a DepthPool object and an EndpointSlice of its
Service pointing at the depth server (which binds an address of 198.18.0.0/15 put on lo, as
the local plane's pod network does: EndpointSlices refuse loopback addresses), and the front end
as its own process (`spatialforge api serve`). A tenant on the enterprise plan and its key.
"""

from __future__ import annotations

import contextlib
import json
import os
import secrets
import subprocess
import sys
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

import httpx
from stack import (  # bench/ is on sys.path: the script's own folder
    frontend_env,
    start_servers,
    stop_servers,
)

from spatialforge.devcluster.plane import STATE, start_cluster
from spatialforge.devcluster.ports import free_port


BENCH_STATE = STATE / "bench-sync"
BUCKET = "sf-bench-sync"


def pod_address() -> str:
    """An address of 198.18.0.0/15 on lo (needs iproute2 and CAP_NET_ADMIN)."""
    address = f"198.19.{secrets.randbelow(250) + 1}.{secrets.randbelow(250) + 1}"
    added = subprocess.run(["ip", "addr", "add", f"{address}/32", "dev", "lo"], capture_output=True, text=True)
    if added.returncode != 0 and "File exists" not in added.stderr:
        raise SystemExit(f"cannot add {address}/32 to lo ({added.stderr.strip()}): --front-end needs iproute2 and "
                         "CAP_NET_ADMIN (root in a container or a dev VM)")
    return address


def drop_address(address: str) -> None:
    subprocess.run(["ip", "addr", "del", f"{address}/32", "dev", "lo"], capture_output=True)


def _cli(env: dict[str, str], *args: str) -> str:
    out = subprocess.run([sys.executable, "-m", "spatialforge.cli", "api", *args], env={**os.environ, **env},
                         capture_output=True, text=True, timeout=120)
    if out.returncode != 0:
        raise SystemExit(f"spatialforge api {' '.join(args)} failed:\n{out.stderr[-2000:]}")
    return out.stdout


@dataclass
class FrontEnd:
    url: str
    key: str


@contextlib.contextmanager
def front_end(host: str, port: int, *, size: str = "small", variant: str = "relative") -> Iterator[FrontEnd]:
    """The stack, with a pool whose one endpoint is the depth server at host:port."""
    BENCH_STATE.mkdir(parents=True, exist_ok=True)
    plane, _ = start_cluster()
    started: list[str] = []
    proc = None
    ns = f"bench-pool-{uuid.uuid4().hex[:6]}"
    try:
        env = start_servers(BENCH_STATE, started)
        pool = {"apiVersion": "spatialforge.io/v1alpha1", "kind": "DepthPool", "metadata": {"name": "bench", "namespace": ns},
                "spec": {"model": {"size": size, "variant": variant}, "gpusPerReplica": 0, "replicas": 0,
                         "maxInFlightPerTenant": 1000}}
        endpoints = {"apiVersion": "discovery.k8s.io/v1", "kind": "EndpointSlice",
                     "metadata": {"name": "spatialforge-pool-bench-manual", "namespace": ns,
                                  "labels": {"kubernetes.io/service-name": "spatialforge-pool-bench",
                                             "endpointslice.kubernetes.io/managed-by": "bench.spatialforge.io"}},
                     "addressType": "IPv4", "ports": [{"name": "http", "port": port, "protocol": "TCP"}],
                     "endpoints": [{"addresses": [host], "conditions": {"ready": True}}]}
        plane.apply({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": ns}})
        plane.apply(pool)
        plane.apply(endpoints)
        api_env = frontend_env(plane, env, BUCKET, SPATIALFORGE_API_METRICS_PORT="0",
                               SPATIALFORGE_API_DEPTH_POOLS=f"{ns}/bench")
        tenant = f"t{uuid.uuid4().hex[:8]}"
        _cli(api_env, "plans", "set", tenant, "enterprise", "--units", "100000000", "--rate", "100000000")
        key = json.loads(_cli(api_env, "keys", "create", tenant))["key"]
        api_port = free_port()
        log = (BENCH_STATE / "apiserver.log").open("wb")
        proc = subprocess.Popen([sys.executable, "-m", "spatialforge.cli", "api", "serve", "--port", str(api_port),
                                 "--workers", "1"], env={**os.environ, **api_env}, stdout=log, stderr=log)
        url = f"http://127.0.0.1:{api_port}"
        deadline = time.monotonic() + 120
        while True:
            if proc.poll() is not None:
                raise SystemExit(f"the front end exited ({proc.returncode}); see {BENCH_STATE / 'apiserver.log'}")
            with contextlib.suppress(httpx.TransportError):
                if httpx.get(url + "/readyz", timeout=2).status_code == 200:
                    break
            if time.monotonic() > deadline:
                raise SystemExit(f"the front end did not become ready; see {BENCH_STATE / 'apiserver.log'}")
            time.sleep(0.2)
        yield FrontEnd(url, key)
    finally:
        if proc is not None:
            proc.terminate()
            proc.wait(timeout=30)
        plane.kubectl("delete", "namespace", ns, "--wait=false", check=False)
        stop_servers(BENCH_STATE, started)


def _post_through(client: httpx.Client | httpx.AsyncClient, fe: FrontEnd, body: bytes,  # type: ignore[no-untyped-def]
                  accept: str = "image/png"):
    return client.post(fe.url + "/v1/depth", files={"image": ("bench.jpg", body)},
                       headers={"X-API-Key": fe.key, "Accept": accept})


def measure(fe: FrontEnd, body: bytes, *, latency_requests: int, requests: int, clients: int,
            batches: Callable[[], dict[str, float]]) -> dict[str, Any]:
    """Through the front end: single-request latency (s) of the PNG and of the raw float16 answer
    (taking turns), then 1 sequential client against `clients` concurrent ones (PNG, images/s),
    and the batch-size buckets the server reached."""
    import asyncio

    with httpx.Client(timeout=120) as c:
        for _ in range(3):  # connections, the pool listing, first shapes
            _post_through(c, fe, body).raise_for_status()
        lat, lat_raw = [], []
        for _ in range(latency_requests):
            for accept, times in (("image/png", lat), ("application/octet-stream", lat_raw)):
                t0 = time.perf_counter()
                _post_through(c, fe, body, accept).raise_for_status()
                times.append(time.perf_counter() - t0)
        t0 = time.perf_counter()
        for _ in range(requests):
            _post_through(c, fe, body).raise_for_status()
        t_seq = time.perf_counter() - t0

    async def concurrent() -> float:
        async with httpx.AsyncClient(timeout=120, limits=httpx.Limits(max_connections=clients)) as ac:
            left = list(range(requests))

            async def worker() -> None:
                while left:
                    left.pop()
                    (await _post_through(ac, fe, body)).raise_for_status()

            t = time.perf_counter()
            await asyncio.gather(*(worker() for _ in range(clients)))
            return time.perf_counter() - t

    before = batches()
    t_conc = asyncio.run(concurrent())
    return {"latency": lat, "latency_float16": lat_raw, "sequential_rate": requests / t_seq, "concurrent_rate": requests / t_conc,
            "before": before, "after": batches()}
