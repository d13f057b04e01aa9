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
     p50 and p99.
The operator is not running, so no Jobs or pods compete for the CPU; every request still goes
through authentication, the plan, the rate limit, (creates) the quota and the Kubernetes API.
The load generator shares the machine's cores with everything above. Final line: JSON.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import secrets
import socket
import statistics
import subprocess
import sys
import time
import uuid
from pathlib import Path

import aiohttp

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from tests.cluster import STATE, start_cluster  # noqa: E402

BENCH_STATE = STATE / "bench-api"
HACK = REPO / "hack"
BUCKET = "sf-bench"
TARGETS = {"reads_per_s": 1000, "read_p99_ms": 50, "creates_per_s": 200}


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(round(q / 100 * (len(ordered) - 1))))]


def script(name: str, action: str, **env: str) -> dict[str, str]:
    proc = subprocess.run(["bash", str(HACK / name), action], capture_output=True, text=True, timeout=120,
                          env={**os.environ, "SPATIALFORGE_STATE": str(BENCH_STATE), **env})
    if proc.returncode != 0:
        raise SystemExit(f"hack/{name} {action} failed:\n{proc.stderr[-2000:]}")
    return {k: v for line in proc.stdout.splitlines() if line.startswith("export ")
            for k, _, v in [line[len("export "):].partition("=")]}


def serve(env: dict[str, str], port: int, workers: int) -> subprocess.Popen[bytes]:
    log = open(BENCH_STATE / "apiserver.log", "wb")  # noqa: SIM115 (lives as long as the process)
    return subprocess.Popen([sys.executable, "-m", "spatialforge.cli", "api", "serve", "--port", str(port),
                             "--workers", str(workers)], env={**os.environ, **env}, stdout=log, stderr=log)


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


async def main(args: argparse.Namespace) -> dict:
    BENCH_STATE.mkdir(parents=True, exist_ok=True)
    plane, _ = start_cluster()
    env: dict[str, str] = {}
    started: list[str] = []
    proc = None
    try:
        for name, port_var, extra in (("redis.sh", "REDIS_PORT", {}), ("stripe-mock.sh", "STRIPE_MOCK_PORT", {}),
                                      ("minio.sh", "MINIO_PORT", {})):
            env.update(script(name, "up", **{port_var: str(free_port())}, **extra))
            started.append(name)
        api_env = {
            "SPATIALFORGE_API_SECRET_KEY": secrets.token_urlsafe(48),
            "SPATIALFORGE_API_REDIS_URL": env["SPATIALFORGE_API_REDIS_URL"],
            "SPATIALFORGE_API_KUBECONFIG": str(plane.kubeconfig),
            "SPATIALFORGE_API_S3_ENDPOINT": env["SPATIALFORGE_S3_ENDPOINT"],
            "SPATIALFORGE_API_S3_ACCESS_KEY_ID": env["AWS_ACCESS_KEY_ID"],
            "SPATIALFORGE_API_S3_SECRET_ACCESS_KEY": env["AWS_SECRET_ACCESS_KEY"],
            "SPATIALFORGE_API_BUCKET": BUCKET,
            "SPATIALFORGE_API_STRIPE_API_KEY": "sk_test_" + secrets.token_hex(24),
            "SPATIALFORGE_API_STRIPE_WEBHOOK_SECRET": "whsec_" + secrets.token_hex(24),
            "SPATIALFORGE_API_STRIPE_API_BASE": env["SPATIALFORGE_API_STRIPE_API_BASE"],
            "SPATIALFORGE_API_LOG_JSON": "true",
            "SPATIALFORGE_API_NAMESPACE_PREFIX": "bench-",
        }
        tenant = f"t{uuid.uuid4().hex[:8]}"
        key = await tenant_key(api_env, tenant)
        port = free_port()
        url = f"http://127.0.0.1:{port}"
        proc = serve(api_env, port, args.workers)
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
        if create_err or read_err:
            raise SystemExit(f"errors: creates {create_err[:3]} ({len(create_err)}), reads {read_err[:3]} ({len(read_err)})")
        result = {
            "workers": args.workers, "concurrency": args.concurrency, "cpus": os.cpu_count(),
            "creates": len(create_lat), "creates_per_s": round(len(create_lat) / create_wall, 1),
            "create_p50_ms": round(statistics.median(create_lat) * 1000, 1),
            "create_p99_ms": round(percentile(create_lat, 99) * 1000, 1),
            "reads": len(read_lat), "reads_per_s": round(len(read_lat) / read_wall, 1),
            "read_p50_ms": round(statistics.median(read_lat) * 1000, 1),
            "read_p99_ms": round(percentile(read_lat, 99) * 1000, 1),
        }
        result["targets_met"] = {
            "reads_per_s": result["reads_per_s"] >= TARGETS["reads_per_s"],
            "read_p99_ms": result["read_p99_ms"] < TARGETS["read_p99_ms"],
            "creates_per_s": result["creates_per_s"] >= TARGETS["creates_per_s"],
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
        for name in reversed(started):
            script(name, "down")


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--workers", type=int, default=1, help="front-end worker processes (the chart runs one per pod)")
    parser.add_argument("--concurrency", type=int, default=16, help="concurrent clients")
    parser.add_argument("--creates", type=int, default=2000, help="jobs created in the create phase")
    parser.add_argument("--read-seconds", type=float, default=15.0, help="length of the read phase")
    result = asyncio.run(main(parser.parse_args()))
    for k, v in result.items():
        print(f"{k:>16}: {v}")
    print(json.dumps(result))
