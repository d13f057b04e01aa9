"""Synchronous depth through the depth server (runner/serve/) against the bare in-process pass.

The server part of issue 14's benchmark: one `python -m spatialforge.runner serve` process on
a model built here (the tiny model by default: its forward takes milliseconds, so the serving
path dominates; `--arch v2-small` for the real architecture's dimensions, random weights).

- latency: single requests one after another, p50 / p99, for each answer (16-bit PNG, raw
  float16, float32 NPY: spatialforge/depth_formats.py), against the estimator's own pass on the
  same image in this process (preprocess + forward + upsampling, same backend); the difference
  is the serving overhead (HTTP, decode, queue, encode). The bare pass and the three answers
  take turns, round by round, so a change in the machine's load hits all four alike, with a
  pause (--settle-ms) before each bare pass and each request: a backend's worker threads spin
  for a while after a pass and would slow the other process;
- encoders alone, on this model's depth map of the image: the server's PNG writer
  (runner/serve/encoding.py, ISA-L deflate) against OpenCV and Pillow at zlib level 1, and the
  raw answers;
- throughput: 16 concurrent clients against one client sending sequentially, same server,
  same image; the batch sizes the server reached (from its /metrics).

    python bench/sync_depth.py                        # ~1 minute on 2 CPU cores
    python bench/sync_depth.py --arch v2-small --requests 32 --latency-requests 10
    python bench/sync_depth.py --front-end            # also through the front end (bench/sync_frontend.py)

With --front-end the same server is also reached the way clients reach a pool: the real stack
(plane, Redis, MinIO, stripe-mock, a DepthPool and its EndpointSlice, `spatialforge api serve`),
`POST /v1/depth` with a multipart upload and an API key, inline PNG: latency and throughput again
(`front_end_*`), the overhead counted against the same bare pass.

Prints a table, then one JSON line (with /proc/loadavg at the start and the end: on a shared
machine a figure is only as good as the load it was taken under).
"""

from __future__ import annotations

import argparse
import asyncio
import functools
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
from collections.abc import Callable
from pathlib import Path
from typing import Any

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


ANSWERS = ("png", "float16", "npy")  # ?format= values timed for latency


def loadavg() -> list[float]:
    """The 1, 5 and 15 minute load averages (/proc/loadavg)."""
    return [float(v) for v in Path("/proc/loadavg").read_text().split()[:3]]


def load_estimator(env: dict[str, str]) -> Any:
    from spatialforge.crds.v1alpha1.common import DepthModel
    from spatialforge.runner.models.estimator import DepthEstimator
    from spatialforge.runner.settings import RunnerSettings

    return DepthEstimator.load(DepthModel(), settings=RunnerSettings.from_env(env))


def timed(fn: Callable[[], object]) -> float:
    t0 = time.perf_counter()
    fn()
    return time.perf_counter() - t0


def encoders(depth: np.ndarray, n: int) -> dict[str, dict[str, float]]:
    """Median ms and bytes of each encoder on one depth map, taking turns n times."""
    import cv2

    from spatialforge.runner.serve import encoding
    from spatialforge.runner.stages.depth import quantize_png16

    def pillow_level1() -> bytes:
        out = io.BytesIO()
        Image.fromarray(quantize_png16(depth, scale=None)[0]).save(out, format="PNG", compress_level=1)
        return out.getvalue()

    def cv2_level1(strategy: int) -> Callable[[], bytes]:
        def run() -> bytes:
            values = quantize_png16(depth, scale=None)[0]
            return cv2.imencode(".png", values, [cv2.IMWRITE_PNG_COMPRESSION, 1, cv2.IMWRITE_PNG_STRATEGY, strategy])[1].tobytes()
        return run

    runs: dict[str, Callable[[], bytes]] = {
        "png_isal_up (served)": lambda: encoding.png16(depth, scale=None)[0],
        "png_cv2_zlib1_rle (before)": cv2_level1(cv2.IMWRITE_PNG_STRATEGY_RLE),
        "png_cv2_zlib1_default": cv2_level1(cv2.IMWRITE_PNG_STRATEGY_DEFAULT),
        "png_pillow_zlib1": pillow_level1,
        "float16": lambda: encoding.float16(depth),
        "npy": lambda: encoding.npy(depth),
    }
    values = quantize_png16(depth, scale=None)[0]
    for name, run in runs.items():  # every PNG must give the same values back
        if name.startswith("png"):
            back = cv2.imdecode(np.frombuffer(run(), np.uint8), cv2.IMREAD_UNCHANGED)
            assert np.array_equal(back, values), f"{name} is not lossless"
    times: dict[str, list[float]] = {name: [] for name in runs}
    for _ in range(n):
        for name, run in runs.items():
            times[name].append(timed(run))
    return {name: {"ms": round(1000 * statistics.median(t), 2), "bytes": len(runs[name]())} for name, t in times.items()}


def latency_rounds(url: str, body: bytes, est: Any, rgb: np.ndarray, n: int, settle: float) -> dict[str, list[float]]:
    """n rounds of: the bare pass, then one request per answer in ANSWERS (seconds each), each
    after a pause of `settle` seconds."""
    out: dict[str, list[float]] = {"bare": [], **{a: [] for a in ANSWERS}}
    with httpx.Client(timeout=120) as client:
        def request(fmt: str) -> None:
            r = client.post(url + "/v1/depth", content=body, params={"format": fmt})
            r.raise_for_status()

        runs: dict[str, Callable[[], object]] = {"bare": lambda: est.predict_rgb([rgb]),
                                                  **{fmt: functools.partial(request, fmt) for fmt in ANSWERS}}
        for _ in range(3):  # connection and first-shape warm-up
            for run in runs.values():
                run()
        for _ in range(n):
            for name, run in runs.items():
                time.sleep(settle)
                out[name].append(timed(run))
    return out


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
    parser.add_argument("--latency-requests", type=int, default=100, help="Rounds of bare pass + one request per answer")
    parser.add_argument("--requests", type=int, default=192, help="Requests per throughput run")
    parser.add_argument("--clients", type=int, default=16)
    parser.add_argument("--max-batch", type=int, default=16)
    parser.add_argument("--max-wait-ms", type=float, default=5.0)
    parser.add_argument("--backend", default="auto")
    parser.add_argument("--encode-repeats", type=int, default=50, help="Runs of each encoder alone")
    parser.add_argument("--settle-ms", type=float, default=30.0, help="Pause before each timed pass or request")
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
        load_start = loadavg()
        est = load_estimator(env)  # also fills the export cache the server reads
        backend = est.backend.name
        encoded = encoders(est.predict_rgb([rgb])[0], args.encode_repeats)
        fe_out: dict | None = None
        host = "127.0.0.1"
        if args.front_end:
            import sync_frontend

            host = sync_frontend.pod_address()
        port = free_port() if host == "127.0.0.1" else sync_frontend.free_port(host)
        proc = start_server(env, port, args, Path(tmp) / "server.log", host=host)
        url = f"http://{host}:{port}"
        try:
            rounds = latency_rounds(url, body, est, rgb, args.latency_requests, args.settle_ms / 1000)
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
        load_end = loadavg()
    bare, lat = rounds["bare"], rounds["png"]
    seq_rate, conc_rate = args.requests / t_seq, args.requests / t_conc
    conc_batches = batches_between(mid, after)
    mean_batch = args.requests / max(1, sum(conc_batches.values()))
    p50_bare, p99_bare = _percentile(bare, 50), _percentile(bare, 99)
    p50, p99 = _percentile(lat, 50), _percentile(lat, 99)
    print(f"model {args.arch} at {args.processor_size} px ({backend}), image {width}x{height} JPEG, max batch {args.max_batch}, max wait {args.max_wait_ms} ms")
    print(f"{'':<34}{'p50 ms':>10}{'p99 ms':>10}")
    print(f"{'bare pass in-process':<34}{1000 * p50_bare:>10.1f}{1000 * p99_bare:>10.1f}")
    print(f"{'one request through the server':<34}{1000 * p50:>10.1f}{1000 * p99:>10.1f}")
    print(f"{'overhead, PNG':<34}{1000 * (p50 - p50_bare):>10.1f}{1000 * (p99 - p99_bare):>10.1f}")
    answers: dict[str, float] = {}
    for fmt in ANSWERS[1:]:
        a50, a99 = _percentile(rounds[fmt], 50), _percentile(rounds[fmt], 99)
        print(f"{'one request, ' + fmt:<34}{1000 * a50:>10.1f}{1000 * a99:>10.1f}")
        print(f"{'overhead, ' + fmt:<34}{1000 * (a50 - p50_bare):>10.1f}{1000 * (a99 - p99_bare):>10.1f}")
        answers |= {f"server_{fmt}_p50_ms": round(1000 * a50, 2), f"server_{fmt}_p99_ms": round(1000 * a99, 2),
                    f"overhead_{fmt}_p50_ms": round(1000 * (a50 - p50_bare), 2),
                    f"overhead_{fmt}_p99_ms": round(1000 * (a99 - p99_bare), 2)}
    print(f"encoders alone on the {width}x{height} depth map (median of {args.encode_repeats}):")
    for name, e in encoded.items():
        print(f"  {name:<32}{e['ms']:>8.2f} ms {e['bytes']:>9} bytes")
    print(f"load average (1/5/15 min): start {load_start}, end {load_end}")
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
        r50, r99 = _percentile(fe_out["latency_float16"], 50), _percentile(fe_out["latency_float16"], 99)
        print(f"{'front end, float16':<34}{1000 * r50:>10.1f}{1000 * r99:>10.1f}")
        print(f"{'front-end overhead, float16':<34}{1000 * (r50 - p50_bare):>10.1f}{1000 * (r99 - p99_bare):>10.1f}")
        print(f"through the front end: 1 sequential client {fe_out['sequential_rate']:.1f} images/s; {args.clients} "
              f"concurrent {fe_out['concurrent_rate']:.1f} images/s ({f_ratio:.2f}x); batches {f_batches}")
        extra = {"front_end_p50_ms": round(1000 * f50, 2), "front_end_p99_ms": round(1000 * f99, 2),
                 "front_end_overhead_p50_ms": round(1000 * (f50 - p50_bare), 2),
                 "front_end_overhead_p99_ms": round(1000 * (f99 - p99_bare), 2),
                 "front_end_float16_p50_ms": round(1000 * r50, 2), "front_end_float16_p99_ms": round(1000 * r99, 2),
                 "front_end_overhead_float16_p50_ms": round(1000 * (r50 - p50_bare), 2),
                 "front_end_overhead_float16_p99_ms": round(1000 * (r99 - p99_bare), 2),
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
        "latency_requests": args.latency_requests, "settle_ms": args.settle_ms, "requests": args.requests,
        "stdev_server_ms": round(1000 * statistics.pstdev(lat), 2),
        **answers, "encoders": encoded, "loadavg_start": load_start, "loadavg_end": load_end,
        **extra,
    }))


if __name__ == "__main__":
    main()
