"""Synchronous depth through the depth server (runner/serve/) against the bare in-process pass.

The server part of issue 14's benchmark: one `python -m spatialforge.runner serve` process on
a model built here (the tiny model by default: its forward takes milliseconds, so the serving
path dominates; `--arch v2-small` for the real architecture's dimensions, random weights).

- latency: single requests one after another (PNG answer), p50 / p99, against the estimator's
  own pass on the same image in this process (preprocess + forward + upsampling, same backend);
  the difference is the serving overhead (HTTP, decode, queue, encode);
- throughput: 16 concurrent clients against one client sending sequentially, same server,
  same image; the batch sizes the server reached (from its /metrics).

    python bench/sync_depth.py                        # ~1 minute on 2 CPU cores
    python bench/sync_depth.py --arch v2-small --requests 32 --latency-requests 10
    python bench/sync_depth.py --front-end            # also through the front end (bench/sync_frontend.py)

With --front-end the same server is also reached the way clients reach a pool: the real stack
(plane, Redis, MinIO, stripe-mock, a DepthPool and its EndpointSlice, `spatialforge api serve`),
`POST /v1/depth` with a multipart upload and an API key, inline PNG: latency and throughput again
(`front_end_*`), the overhead counted against the same bare pass.

Prints a table, then one JSON line.
"""

from __future__ import annotations

import argparse
import asyncio
import io
import json
import os
import re
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import httpx
import numpy as np
from PIL import Image

from spatialforge.devcluster.ports import free_port


def _percentile(values: list[float], q: float) -> float:
    return float(np.percentile(np.asarray(values), q))


def build_model(root: Path, arch: str, processor_size: int) -> Path:
    from spatialforge.runner.models.configs import save_random, tiny_config, v2_small_config

    config = tiny_config() if arch == "tiny" else v2_small_config()
    save_random(config, str(root / "depth-anything-v2-small-relative"), processor_size=processor_size)
    return root


def bare_pass(root: Path, rgb: np.ndarray, n: int, env: dict[str, str]) -> tuple[list[float], str]:
    from spatialforge.crds.v1alpha1.common import DepthModel
    from spatialforge.runner.models.estimator import DepthEstimator
    from spatialforge.runner.settings import RunnerSettings

    est = DepthEstimator.load(DepthModel(), settings=RunnerSettings.from_env(env))
    est.predict_rgb([rgb])
    times = []
    for _ in range(n):
        t0 = time.perf_counter()
        est.predict_rgb([rgb])
        times.append(time.perf_counter() - t0)
    return times, est.backend.name


def start_server(env: dict[str, str], port: int, args: argparse.Namespace, log: Path,
                 host: str = "127.0.0.1") -> subprocess.Popen[bytes]:
    cmd = [sys.executable, "-m", "spatialforge.runner", "serve", "--host", host, "--port", str(port),
           "--max-batch", str(args.max_batch), "--max-wait-ms", str(args.max_wait_ms), "--max-queue", "256"]
    with log.open("wb") as out:
        proc = subprocess.Popen(cmd, env=env, stdout=out, stderr=subprocess.STDOUT)
    url = f"http://{host}:{port}"
    deadline = time.monotonic() + 600
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise SystemExit(f"server exited {proc.returncode}:\n{log.read_text()[-3000:]}")
        try:
            if httpx.get(url + "/readyz", timeout=2).status_code == 200:
                return proc
        except httpx.TransportError:
            pass
        time.sleep(0.1)
    proc.kill()
    raise SystemExit("server not ready within 600 s")


def batch_histogram(url: str) -> dict[str, float]:
    """Cumulative batch-size buckets from /metrics: {"1": n, "2": n, ..., "+Inf": n}."""
    text = httpx.get(url + "/metrics", timeout=5).text
    return {m.group(1).removesuffix(".0"): float(m.group(2))
            for m in re.finditer(r'^spatialforge_serve_batch_size_bucket\{le="([^"]+)"\} ([0-9.e+]+)$', text, re.M)}


def batches_between(before: dict[str, float], after: dict[str, float]) -> dict[str, int]:
    """Batches per size bucket (non-cumulative) dispatched between two snapshots."""
    out, prev = {}, 0.0
    for le in after:
        cum = after[le] - before.get(le, 0.0)
        if cum - prev > 0:
            out[f"<={le}"] = int(cum - prev)
        prev = cum
    return out


def sequential(url: str, body: bytes, n: int) -> tuple[list[float], float]:
    times = []
    with httpx.Client(timeout=120) as client:
        t_all = time.perf_counter()
        for _ in range(n):
            t0 = time.perf_counter()
            r = client.post(url + "/v1/depth", content=body, params={"format": "png"})
            r.raise_for_status()
            times.append(time.perf_counter() - t0)
        return times, time.perf_counter() - t_all


async def concurrent(url: str, body: bytes, n: int, clients: int) -> float:
    async with httpx.AsyncClient(timeout=120, limits=httpx.Limits(max_connections=clients)) as client:
        left = list(range(n))

        async def worker() -> None:
            while left:
                left.pop()
                r = await client.post(url + "/v1/depth", content=body, params={"format": "png"})
                r.raise_for_status()

        t0 = time.perf_counter()
        await asyncio.gather(*(worker() for _ in range(clients)))
        return time.perf_counter() - t0


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--arch", choices=("tiny", "v2-small"), default="tiny")
    parser.add_argument("--size", default="640x480", help="WIDTHxHEIGHT of the test image (JPEG)")
    parser.add_argument("--processor-size", type=int, default=518,
                        help="Model input size (518 as published; smaller makes the forward cheaper, isolating the serving path)")
    parser.add_argument("--latency-requests", type=int, default=100)
    parser.add_argument("--requests", type=int, default=192, help="Requests per throughput run")
    parser.add_argument("--clients", type=int, default=16)
    parser.add_argument("--max-batch", type=int, default=16)
    parser.add_argument("--max-wait-ms", type=float, default=5.0)
    parser.add_argument("--backend", default="auto")
    parser.add_argument("--front-end", action="store_true", help="Also through the front end on the real stack")
    args = parser.parse_args()
    width, height = (int(v) for v in args.size.lower().split("x"))
    rng = np.random.default_rng(0)
    yy, xx = np.mgrid[0:height, 0:width]
    rgb = np.clip(np.stack([xx % 256, (2 * yy) % 256, (xx + yy) % 256], -1) + rng.integers(0, 40, (height, width, 3)), 0, 255)
    rgb = rgb.astype(np.uint8)
    buf = io.BytesIO()
    Image.fromarray(rgb).save(buf, format="JPEG", quality=92)
    body = buf.getvalue()

    with tempfile.TemporaryDirectory(prefix="sf-sync-") as tmp:
        root = build_model(Path(tmp) / "models", args.arch, args.processor_size)
        env = {**os.environ, "SPATIALFORGE_MODEL_DIR": str(root), "SPATIALFORGE_DEVICE": os.environ.get("SPATIALFORGE_DEVICE", "cpu"),
               "SPATIALFORGE_DEPTH_BACKEND": args.backend, "SPATIALFORGE_BACKEND_CACHE": str(Path(tmp) / "cache")}
        bare, backend = bare_pass(root, rgb, args.latency_requests, env)  # also fills the export cache
        fe_out: dict | None = None
        host = "127.0.0.1"
        if args.front_end:
            import sync_frontend

            host = sync_frontend.pod_address()
        port = free_port() if host == "127.0.0.1" else sync_frontend.free_port(host)
        proc = start_server(env, port, args, Path(tmp) / "server.log", host=host)
        url = f"http://{host}:{port}"
        try:
            sequential(url, body, 3)  # connection and first-shape warm-up
            lat, _ = sequential(url, body, args.latency_requests)
            before = batch_histogram(url)
            _, t_seq = sequential(url, body, args.requests)
            mid = batch_histogram(url)
            t_conc = asyncio.run(concurrent(url, body, args.requests, args.clients))
            after = batch_histogram(url)
            if args.front_end:
                with sync_frontend.front_end(host, port) as fe:
                    fe_out = sync_frontend.measure(fe, body, latency_requests=args.latency_requests,
                                                   requests=args.requests, clients=args.clients,
                                                   batches=lambda: batch_histogram(url))
        finally:
            proc.send_signal(signal.SIGTERM)
            proc.wait(timeout=60)
            if host != "127.0.0.1":
                sync_frontend.drop_address(host)
    seq_rate, conc_rate = args.requests / t_seq, args.requests / t_conc
    conc_batches = batches_between(mid, after)
    mean_batch = args.requests / max(1, sum(conc_batches.values()))
    p50_bare, p99_bare = _percentile(bare, 50), _percentile(bare, 99)
    p50, p99 = _percentile(lat, 50), _percentile(lat, 99)
    print(f"model {args.arch} at {args.processor_size} px ({backend}), image {width}x{height} JPEG, max batch {args.max_batch}, max wait {args.max_wait_ms} ms")
    print(f"{'':<34}{'p50 ms':>10}{'p99 ms':>10}")
    print(f"{'bare pass in-process':<34}{1000 * p50_bare:>10.1f}{1000 * p99_bare:>10.1f}")
    print(f"{'one request through the server':<34}{1000 * p50:>10.1f}{1000 * p99:>10.1f}")
    print(f"{'overhead':<34}{1000 * (p50 - p50_bare):>10.1f}{1000 * (p99 - p99_bare):>10.1f}")
    print(f"throughput: 1 sequential client {seq_rate:.1f} images/s; {args.clients} concurrent clients {conc_rate:.1f} images/s "
          f"({conc_rate / seq_rate:.2f}x); batches {conc_batches} (mean {mean_batch:.1f}); sequential batches "
          f"{batches_between(before, mid)}")
    extra: dict = {}
    if fe_out is not None:
        f50, f99 = _percentile(fe_out["latency"], 50), _percentile(fe_out["latency"], 99)
        f_ratio = fe_out["concurrent_rate"] / fe_out["sequential_rate"]
        f_batches = batches_between(fe_out["before"], fe_out["after"])
        print(f"{'one request through the front end':<34}{1000 * f50:>10.1f}{1000 * f99:>10.1f}")
        print(f"{'front-end overhead (vs bare)':<34}{1000 * (f50 - p50_bare):>10.1f}{1000 * (f99 - p99_bare):>10.1f}")
        print(f"through the front end: 1 sequential client {fe_out['sequential_rate']:.1f} images/s; {args.clients} "
              f"concurrent {fe_out['concurrent_rate']:.1f} images/s ({f_ratio:.2f}x); batches {f_batches}")
        extra = {"front_end_p50_ms": round(1000 * f50, 2), "front_end_p99_ms": round(1000 * f99, 2),
                 "front_end_overhead_p50_ms": round(1000 * (f50 - p50_bare), 2),
                 "front_end_overhead_p99_ms": round(1000 * (f99 - p99_bare), 2),
                 "front_end_sequential_images_per_s": round(fe_out["sequential_rate"], 2),
                 "front_end_concurrent_images_per_s": round(fe_out["concurrent_rate"], 2),
                 "front_end_throughput_ratio": round(f_ratio, 3), "front_end_concurrent_batches": f_batches}
    print(json.dumps({
        "bench": "sync_depth", "arch": args.arch, "processor_size": args.processor_size, "backend": backend, "image": f"{width}x{height}",
        "max_batch": args.max_batch, "max_wait_ms": args.max_wait_ms,
        "bare_p50_ms": round(1000 * p50_bare, 2), "bare_p99_ms": round(1000 * p99_bare, 2),
        "server_p50_ms": round(1000 * p50, 2), "server_p99_ms": round(1000 * p99, 2),
        "overhead_p50_ms": round(1000 * (p50 - p50_bare), 2), "overhead_p99_ms": round(1000 * (p99 - p99_bare), 2),
        "sequential_images_per_s": round(seq_rate, 2), "concurrent_images_per_s": round(conc_rate, 2),
        "clients": args.clients, "throughput_ratio": round(conc_rate / seq_rate, 3),
        "concurrent_batches": conc_batches, "mean_batch_size": round(mean_batch, 2),
        "latency_requests": args.latency_requests, "requests": args.requests,
        "stdev_server_ms": round(1000 * statistics.pstdev(lat), 2),
        **extra,
    }))


if __name__ == "__main__":
    main()
