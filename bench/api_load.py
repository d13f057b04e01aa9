"""Front-end load: authenticated job creates/s and job-status reads/s, against the real stack.

    python bench/api_load.py [--workers W] [--concurrency C] [--creates N] [--read-seconds S]

One run on this machine: the local control plane (hack/cluster.sh), Redis, MinIO and
stripe-mock (hack/*.sh, on free ports under $SPATIALFORGE_STATE/bench-api), and the front end
served by `spatialforge api serve --workers W` as its own process, exactly as deployed. A tenant
on the enterprise plan with a key; then
  1. creates: N `POST /v1/depth-batches` by C concurrent clients (each a real DepthBatch in the
     tenant's namespace) -> creates/s, p50 and p99;
  2. reads: `GET /v1/jobs/{id}` on those jobs by C concurrent clients for S seconds (served from
     the watch-backed cache; auth and the per-minute rate check hit Redis on each) -> reads/s,
     p50 and p99;
  3. `/health` latency (one client calling it back to back) idle, during a burst of B creates
     (C concurrent clients), and while large bodies arrive for S seconds (A clients sending
     50 MB bodies with a made-up key, with the real key, chunked with the real key, and
     bodies just under the cap of malformed JSON with the real key) -> p50/p99 and the front
     end's resident memory before and after. The probe runs in its own process and probes a
     bare asyncio server in turn (`bare_*`): the machine's own scheduling noise at that moment.
The operator is not running, so no Jobs or pods compete for the CPU; every request still goes
through authentication, the plan, the rate limit, (creates) the quota and the Kubernetes API.
The load generator shares the machine's cores with everything above. Final line: JSON.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import multiprocessing
import os
import statistics
import subprocess
import sys
import time
import uuid
from pathlib import Path
from typing import Any

import aiohttp
from stack import (  # bench/ is on sys.path: the script's own folder
    frontend_env,
    start_servers,
    stop_servers,
)

from spatialforge.devcluster.plane import STATE, start_cluster
from spatialforge.devcluster.ports import free_port


BENCH_STATE = STATE / "bench-api"
BUCKET = "sf-bench"
TARGETS = {"reads_per_s": 1000, "read_p99_ms": 50, "creates_per_s": 200, "health_p99_ms": 50}
BIG = 50 * 1024 * 1024


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(round(q / 100 * (len(ordered) - 1))))]


def serve(env: dict[str, str], port: int, workers: int, nice: int = 0) -> subprocess.Popen[bytes]:
    log = open(BENCH_STATE / "apiserver.log", "wb")  # noqa: SIM115 (lives as long as the process)
    return subprocess.Popen([sys.executable, "-m", "spatialforge.cli", "api", "serve", "--port", str(port),
                             "--workers", str(workers)], env={**os.environ, **env}, stdout=log, stderr=log,
                            preexec_fn=(lambda: os.nice(nice)) if nice else None)


async def wait_ready(url: str, proc: subprocess.Popen[bytes], seconds: float = 60) -> None:
    deadline = time.monotonic() + seconds
    async with aiohttp.ClientSession() as session:
        while time.monotonic() < deadline:
            if proc.poll() is not None:
                raise SystemExit(f"the front end exited ({proc.returncode}); see {BENCH_STATE / 'apiserver.log'}")
            try:
                async with session.get(f"{url}/readyz") as resp:
                    if resp.status == 200:
                        return
            except aiohttp.ClientError:
                pass
            await asyncio.sleep(0.2)
    raise SystemExit(f"the front end did not become ready; see {BENCH_STATE / 'apiserver.log'}")


async def tenant_key(env: dict[str, str], tenant: str) -> str:
    """The tenant on the enterprise plan (rate and units far above the load), and its key."""
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "spatialforge.cli", "api", "plans", "set", tenant, "enterprise", "--units", "100000000",
        "--rate", "100000000", "--gpus", "64", env={**os.environ, **env}, stdout=subprocess.DEVNULL)
    assert await proc.wait() == 0, "spatialforge api plan set failed"
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "spatialforge.cli", "api", "keys", "create", tenant, env={**os.environ, **env},
        stdout=subprocess.PIPE)
    out, _ = await proc.communicate()
    assert proc.returncode == 0, "spatialforge api keys create failed"
    return json.loads(out)["key"]


async def drive(concurrency: int, work, *, count: int | None = None, seconds: float | None = None):
    """Run `work(i)` from `concurrency` clients, either `count` calls in all or for `seconds`;
    return (latencies in s, wall seconds, errors)."""
    latencies: list[float] = []
    errors: list[str] = []
    next_i = 0
    stop_at = time.perf_counter() + seconds if seconds else None

    async def client() -> None:
        nonlocal next_i
        while True:
            if count is not None and next_i >= count:
                return
            if stop_at is not None and time.perf_counter() >= stop_at:
                return
            i, next_i = next_i, next_i + 1
            t = time.perf_counter()
            problem = await work(i)
            latencies.append(time.perf_counter() - t)
            if problem:
                errors.append(problem)

    start = time.perf_counter()
    await asyncio.gather(*(client() for _ in range(concurrency)))
    return latencies, time.perf_counter() - start, errors


def rss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return round(int(line.split()[1]) / 1024, 1)
    return 0.0


def _probe(urls: list[str], stop: Any, out: Any) -> None:
    """In its own process: `GET /health` on each URL in turn, back to back, one keep-alive
    connection each, until `stop`; puts {url: latencies} on `out`."""
    import http.client
    from urllib.parse import urlsplit

    conns = {u: http.client.HTTPConnection(urlsplit(u).hostname, urlsplit(u).port, timeout=30) for u in urls}
    latencies: dict[str, list[float]] = {u: [] for u in urls}
    while not stop.is_set():
        for u, conn in conns.items():
            t = time.perf_counter()
            conn.request("GET", "/health")
            resp = conn.getresponse()
            resp.read()
            latencies[u].append(time.perf_counter() - t)
            assert resp.status == 200, resp.status
    out.put(latencies)


def _bare_server(port: int, ready: Any, nice: int = 0) -> None:
    """In its own process: a bare asyncio HTTP server answering 200 to anything (the machine's
    own scheduling noise, probed next to the front end)."""
    answer = b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: 15\r\n\r\n{\"status\":\"ok\"}"

    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            while await reader.readuntil(b"\r\n\r\n"):
                writer.write(answer)
                await writer.drain()
        except (asyncio.IncompleteReadError, ConnectionError):
            writer.close()

    if nice:
        os.nice(nice)

    async def main() -> None:
        server = await asyncio.start_server(handle, "127.0.0.1", port)
        ready.set()
        async with server:
            await server.serve_forever()

    asyncio.run(main())


class Probe:
    """/health of the front end and of a bare asyncio server, probed from a separate process
    (the load generator's own event loop never delays a probe)."""

    def __init__(self, url: str, nice: int = 0) -> None:
        ctx = multiprocessing.get_context("spawn")
        self.ctx = ctx
        port = free_port()
        ready = ctx.Event()
        self.bare = ctx.Process(target=_bare_server, args=(port, ready, nice), daemon=True)
        self.bare.start()
        ready.wait(30)
        self.urls = [url, f"http://127.0.0.1:{port}"]

    async def during(self, load) -> tuple[list[float], list[float], object]:
        """Run `load()` while probing; (front-end latencies, bare-server latencies, load's result)."""
        stop, out = self.ctx.Event(), self.ctx.Queue()
        prober = self.ctx.Process(target=_probe, args=(self.urls, stop, out), daemon=True)
        prober.start()
        await asyncio.sleep(1.0)  # the prober process is up and probing
        try:
            result = await load()
        finally:
            stop.set()
        got = await asyncio.get_running_loop().run_in_executor(None, out.get, True, 60)
        prober.join(10)
        return got[self.urls[0]], got[self.urls[1]], result

    def close(self) -> None:
        self.bare.terminate()


def summary_ms(prefix: str, latencies: list[float]) -> dict[str, float]:
    return {f"{prefix}_n": len(latencies), f"{prefix}_p50_ms": round(statistics.median(latencies) * 1000, 1),
            f"{prefix}_p99_ms": round(percentile(latencies, 99) * 1000, 1)}


async def large_bodies(url: str, key: str, limit: int, attackers: int, seconds: float) -> dict[str, int]:
    """`attackers` clients sending large bodies for `seconds`; answers by status."""
    big = b"[" * BIG
    under = b'{"inputs": [' + b'"x",' * ((limit - 64) // 4)  # malformed JSON just under the cap
    stop_at = time.perf_counter() + seconds
    statuses: dict[str, int] = {}

    def chunks():
        async def gen():
            for _ in range(BIG // (1 << 20)):
                yield b"[" * (1 << 20)
        return gen()

    kinds = [("made-up key", {"X-API-Key": "sf_live_" + "N" * 40}, lambda: big),
             ("real key", {"X-API-Key": key}, lambda: big),
             ("chunked", {"X-API-Key": key}, chunks),
             ("malformed under cap", {"X-API-Key": key}, lambda: under)]

    async def client(i: int) -> None:
        name, headers, body = kinds[i % len(kinds)]
        async with aiohttp.ClientSession(base_url=url) as session:
            while time.perf_counter() < stop_at:
                try:
                    async with session.post("/v1/depth-batches", data=body(),
                                            headers={**headers, "Content-Type": "application/json"}) as resp:
                        await resp.read()
                        label = f"{name}:{resp.status}"
                except (aiohttp.ClientError, ConnectionError) as exc:  # the server closed mid-send
                    label = f"{name}:{type(exc).__name__}"
                statuses[label] = statuses.get(label, 0) + 1

    await asyncio.gather(*(client(i) for i in range(attackers)))
    return statuses


async def main(args: argparse.Namespace) -> dict:
    BENCH_STATE.mkdir(parents=True, exist_ok=True)
    plane, _ = start_cluster()
    started: list[str] = []
    proc = None
    try:
        env = start_servers(BENCH_STATE, started)
        api_env = frontend_env(plane, env, BUCKET, SPATIALFORGE_API_LOG_JSON="true",
                               SPATIALFORGE_API_MAX_BODY_BYTES=str(args.max_body))
        if args.skip_throughput:
            args.creates, args.read_seconds = args.concurrency * 2, 2.0
        tenant = f"t{uuid.uuid4().hex[:8]}"
        key = await tenant_key(api_env, tenant)
        port = free_port()
        url = f"http://127.0.0.1:{port}"
        proc = serve(api_env, port, args.workers, args.nice)
        await wait_ready(url, proc)

        headers = {"X-API-Key": key, "Content-Type": "application/json"}
        prefix = f"s3://{BUCKET}/tenants/{tenant}/"
        body = json.dumps({"inputs": [f"{prefix}inputs/img.jpg"], "output": {"uri": f"{prefix}results"},
                           "placement": {"gpus": 0}}).encode()
        ids: list[str] = []
        connector = aiohttp.TCPConnector(limit=args.concurrency)
        async with aiohttp.ClientSession(base_url=url, connector=connector, headers=headers) as session:
            async def create(i: int) -> str | None:
                async with session.post("/v1/depth-batches", data=body) as resp:
                    data = await resp.read()
                    if resp.status != 202:
                        return f"{resp.status} {data[:200]!r}"
                    ids.append(json.loads(data)["id"])
                    return None

            # Warm up: the namespace is created by the first request; connections open.
            await drive(args.concurrency, create, count=args.concurrency * 2)
            create_lat, create_wall, create_err = await drive(args.concurrency, create, count=args.creates)

            async def read(i: int) -> str | None:
                async with session.get(f"/v1/jobs/{ids[i % len(ids)]}") as resp:
                    data = await resp.read()
                    return None if resp.status == 200 else f"{resp.status} {data[:200]!r}"

            await drive(args.concurrency, read, seconds=2)  # every worker's cache has them
            read_lat, read_wall, read_err = await drive(args.concurrency, read, seconds=args.read_seconds)

            # /health idle, under a burst of creates, and while large bodies arrive.
            probe = Probe(url, args.nice)
            try:
                idle, idle_bare, _ = await probe.during(lambda: asyncio.sleep(2))
                burst_lat, burst_bare, burst_result = await probe.during(
                    lambda: drive(args.concurrency, create, count=args.burst))
                burst_err = burst_result[2]  # type: ignore[index]
                rss_before = rss_mb(proc.pid)
                bodies_lat, bodies_bare, statuses = await probe.during(
                    lambda: large_bodies(url, key, args.max_body, args.attackers, args.body_seconds))
                rss_after = rss_mb(proc.pid)
            finally:
                probe.close()
        if create_err or read_err or burst_err:
            raise SystemExit(f"errors: creates {create_err[:3]} ({len(create_err)}), reads {read_err[:3]} "
                             f"({len(read_err)}), burst {burst_err[:3]}")
        result = {
            "workers": args.workers, "nice": args.nice, "load_avg_1m": round(os.getloadavg()[0], 1), "concurrency": args.concurrency, "cpus": os.cpu_count(),
            "creates": len(create_lat), "creates_per_s": round(len(create_lat) / create_wall, 1),
            "create_p50_ms": round(statistics.median(create_lat) * 1000, 1),
            "create_p99_ms": round(percentile(create_lat, 99) * 1000, 1),
            "reads": len(read_lat), "reads_per_s": round(len(read_lat) / read_wall, 1),
            "read_p50_ms": round(statistics.median(read_lat) * 1000, 1),
            "read_p99_ms": round(percentile(read_lat, 99) * 1000, 1),
        }
        result.update(summary_ms("health_idle", idle))
        result.update(summary_ms("bare_idle", idle_bare))
        result.update(summary_ms("health_under_creates", burst_lat))
        result.update(summary_ms("bare_under_creates", burst_bare))
        result["burst_creates"] = args.burst
        result.update(summary_ms("health_under_bodies", bodies_lat))
        result.update(summary_ms("bare_under_bodies", bodies_bare))
        result["large_body_answers"] = statuses
        result["rss_mb_before_bodies"], result["rss_mb_after_bodies"] = rss_before, rss_after
        result["targets_met"] = {
            "reads_per_s": result["reads_per_s"] >= TARGETS["reads_per_s"],
            "read_p99_ms": result["read_p99_ms"] < TARGETS["read_p99_ms"],
            "creates_per_s": result["creates_per_s"] >= TARGETS["creates_per_s"],
            "health_under_creates_p99_ms": result["health_under_creates_p99_ms"] < TARGETS["health_p99_ms"],
            "health_under_bodies_p99_ms": result["health_under_bodies_p99_ms"] < TARGETS["health_p99_ms"],
        }
        plane.kubectl("delete", "namespace", f"bench-{tenant}", "--wait=false", check=False)
        return result
    finally:
        if proc is not None:
            proc.terminate()
            try:
                proc.wait(30)
            except subprocess.TimeoutExpired:
                proc.kill()
        stop_servers(BENCH_STATE, started)


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--workers", type=int, default=1, help="front-end worker processes (the chart runs one per pod)")
    parser.add_argument("--concurrency", type=int, default=16, help="concurrent clients")
    parser.add_argument("--creates", type=int, default=2000, help="jobs created in the create phase")
    parser.add_argument("--read-seconds", type=float, default=15.0, help="length of the read phase")
    parser.add_argument("--burst", type=int, default=200, help="creates while /health is probed")
    parser.add_argument("--attackers", type=int, default=4, help="clients sending large bodies")
    parser.add_argument("--body-seconds", type=float, default=10.0, help="how long large bodies arrive")
    parser.add_argument("--max-body", type=int, default=1024 * 1024, help="the front end's max_body_bytes")
    parser.add_argument("--nice", type=int, default=0,
                        help="niceness of the front end and of the bare reference server (negative needs root): on a "
                             "machine shared with other work, keeps that work from deciding the /health figures")
    parser.add_argument("--skip-throughput", action="store_true",
                        help="only the /health phases (creates 2 x concurrency, reads 2 s)")
    result = asyncio.run(main(parser.parse_args()))
    for k, v in result.items():
        print(f"{k:>16}: {v}")
    print(json.dumps(result))
