"""Depth throughput: the runner's DepthBatch path on each depth backend vs a naive transformers loop.

Same model (the published Depth-Anything-V2-Small architecture at 518 px, random weights, built
offline), same images, same machine, one process. Paths: the naive per-image transformers
pipeline, then the runner with each installed backend (SPATIALFORGE_DEPTH_BACKEND=torch,
onnxruntime, openvino, the opt-in onnx-int8, and auto: the timed pass's choice), interleaved
`--repeat` (at least 4) times. The ONNX export, parity check and auto's timed pass happen
before timing (as at image build or first use).

Each path reports its min and median; the load average (/proc/loadavg) is read before every
run. A ratio between paths measured while other work ran is not a speed-up, so when the
highest 1-minute load seen exceeds the core count no speed-up is printed (the figures are, with
the reason).

    python bench/depth_throughput.py                      # 8 images of 640x480 (several minutes on 2 CPU cores)
    python bench/depth_throughput.py --images 200 --size 1280x720 --device cuda

Prints a table, then one JSON line.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import tempfile
import time
from pathlib import Path

import numpy as np
from PIL import Image


def make_images(folder: Path, n: int, width: int, height: int) -> list[Path]:
    rng = np.random.default_rng(0)
    folder.mkdir(parents=True, exist_ok=True)
    paths = []
    yy, xx = np.mgrid[0:height, 0:width]
    for i in range(n):
        base = np.stack([(xx + 7 * i) % 256, (yy * 2) % 256, (xx + yy) % 256], axis=-1)
        img = np.clip(base + rng.integers(0, 60, size=base.shape), 0, 255).astype(np.uint8)
        path = folder / f"img{i:04d}.jpg"
        Image.fromarray(img).save(path, quality=92)
        paths.append(path)
    return paths


def make_pipeline(model_dir: Path, device: str):
    import torch
    from transformers import pipeline

    pipe = pipeline("depth-estimation", model=str(model_dir), device=torch.device(device))
    pipe(Image.open(next(model_dir.parent.joinpath("images").glob("*.jpg"))))  # warm-up
    return pipe


def naive_loop(pipe, images: list[Path], out: Path) -> float:
    """One image at a time: load, pipeline(), save PNG + NPY."""
    out.mkdir(parents=True, exist_ok=True)
    t0 = time.perf_counter()
    for path in images:
        result = pipe(Image.open(path))
        result["depth"].save(out / f"{path.stem}.png")
        np.save(out / f"{path.stem}.npy", result["predicted_depth"].float().cpu().numpy())
    return time.perf_counter() - t0


def load_average() -> float:
    """The 1-minute load average (/proc/loadavg); -1 where there is none."""
    try:
        return float(Path("/proc/loadavg").read_text().split()[0])
    except (OSError, ValueError, IndexError):
        return -1.0


def cores() -> int:
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1


def make_runner(root: Path, device: str, backend: str):
    """A RunContext with the model loaded on `backend` (exported, parity-checked, warmed), as in a pod."""
    from spatialforge.crds.v1alpha1.common import DepthModel
    from spatialforge.runner.devices import choose_device
    from spatialforge.runner.settings import RunnerSettings
    from spatialforge.runner.stages.base import RunContext

    env = {
        **os.environ, "SPATIALFORGE_MODEL_DIR": str(root), "SPATIALFORGE_TERMINATION_LOG": str(root / "term.log"),
        "SPATIALFORGE_DEPTH_BACKEND": backend, "SPATIALFORGE_BACKEND_CACHE": str(root / "backend-cache"),
    }
    ctx = RunContext(namespace="bench", name=f"depth-{backend}", settings=RunnerSettings.from_env(env), device=choose_device(device))
    est = ctx.estimator(DepthModel())
    est.predict_rgb([np.zeros((480, 640, 3), np.uint8)])  # warm-up
    return ctx, est, env


def runner_path(ctx, env: dict[str, str], root: Path, images_dir: Path, batch_size: int, backend: str) -> tuple[float, dict]:
    """The runner's DepthBatch stage through run_local."""
    import yaml

    from spatialforge.runner.app import run_local

    manifest = root / f"bench-{backend}.yaml"
    manifest.write_text(yaml.safe_dump({
        "apiVersion": "spatialforge.io/v1alpha1", "kind": "DepthBatch", "metadata": {"name": ctx.name, "namespace": "bench"},
        "spec": {"inputs": [images_dir.as_uri() + "/"], "output": {"uri": (root / "runner-out").as_uri()}, "batchSize": batch_size},
    }))
    t0 = time.perf_counter()
    outcome = run_local(manifest, env=env, ctx=ctx, show_progress=False)
    seconds = time.perf_counter() - t0
    if not outcome.ok:
        raise SystemExit(f"runner ({backend}) failed: {outcome.reason}")
    return seconds, outcome.results[0].summary


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--images", type=int, default=8)
    parser.add_argument("--size", default="640x480", help="WIDTHxHEIGHT of the generated images")
    parser.add_argument("--batch-size", type=int, default=4, help="The spec's batchSize (auto may cap it: timing.py).")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--repeat", type=int, default=4, help="Interleaved runs per path (at least 4).")
    parser.add_argument("--backends", default=None, help="Comma list (default: every installed one, and auto).")
    args = parser.parse_args()
    if args.repeat < 4:
        parser.error("--repeat must be at least 4: a min and a median of fewer runs say little on a shared machine")
    import importlib.util

    import torch

    from spatialforge.runner.models.backends import BACKENDS, INT8_BACKENDS, BackendError
    from spatialforge.runner.models.configs import save_random, v2_small_config

    if args.backends:
        wanted = args.backends.split(",")
    else:
        wanted = [b for b in BACKENDS if b == "torch" or importlib.util.find_spec(b)]
        if importlib.util.find_spec("onnxruntime") and args.device == "cpu":
            wanted += list(INT8_BACKENDS)
        wanted.append("auto")
    width, height = (int(v) for v in args.size.lower().split("x"))
    loads: list[float] = [load_average()]
    with tempfile.TemporaryDirectory(prefix="sf-bench-") as tmp:
        root = Path(tmp)
        model_dir = root / "depth-anything-v2-small-relative"
        save_random(v2_small_config(), str(model_dir))
        from transformers import AutoModelForDepthEstimation

        params = sum(p.numel() for p in AutoModelForDepthEstimation.from_pretrained(str(model_dir)).parameters())
        images = make_images(root / "images", args.images, width, height)
        print(f"model: Depth-Anything-V2-Small architecture at 518 px, random weights, {params / 1e6:.1f} M parameters")
        print(f"images: {args.images} x {width}x{height} JPEG; device {args.device}; torch threads {torch.get_num_threads()}; "
              f"{cores()} cores; load average {Path('/proc/loadavg').read_text().strip() if loads[0] >= 0 else 'unknown'}")
        pipe = make_pipeline(model_dir, args.device)
        runners = {}
        for backend in wanted:
            t0 = time.perf_counter()
            try:
                runners[backend] = make_runner(root, args.device, backend)
            except BackendError as exc:  # e.g. int8 outside its AbsRel limit on this model: named, not timed
                print(f"{backend}: not usable here, not timed: {exc}")
                continue
            est = runners[backend][1]
            print(f"{backend}: ready in {time.perf_counter() - t0:.1f} s (export + parity check + warm-up), "
                  f"backend {est.backend.name}, parity {est.parity}, batch {est.batch_size(args.batch_size)}")
        naive_runs: list[float] = []
        runs: dict[str, list[tuple[float, dict]]] = {b: [] for b in runners}
        for _ in range(args.repeat):  # interleaved, so a noisy neighbour hurts every path alike
            loads.append(load_average())
            naive_runs.append(naive_loop(pipe, images, root / "naive-out"))
            for backend, (ctx, _est, env) in runners.items():
                loads.append(load_average())
                runs[backend].append(runner_path(ctx, env, root, root / "images", args.batch_size, backend))
        loads.append(load_average())
        print(f"runs (s): naive {[round(t, 1) for t in naive_runs]}, "
              + ", ".join(f"{b} {[round(t, 1) for t, _ in r]}" for b, r in runs.items()))
    n = args.images
    peak_load, n_cores = max(loads), cores()
    quiet = 0 <= peak_load <= n_cores
    why = None if quiet else (f"no speed-up printed: the 1-minute load average reached {peak_load:.2f} "
                              f"(> {n_cores} cores) during the runs, so other work shared the CPU")
    t_naive, m_naive = min(naive_runs), statistics.median(naive_runs)
    best = {b: min(r, key=lambda x: x[0]) for b, r in runs.items()}
    median = {b: statistics.median(t for t, _ in r) for b, r in runs.items()}

    def ratio(secs: float) -> str:
        return f"{t_naive / secs:>9.2f}x" if quiet else f"{'-':>10}"

    print(f"{'path':<28}{'min s':>9}{'median s':>10}{'ms/image':>10}{'speed-up':>10}{'forward':>9}")
    print(f"{'naive pipeline loop':<28}{t_naive:>9.2f}{m_naive:>10.2f}{1000 * t_naive / n:>10.1f}{ratio(t_naive)}")
    for b, (secs, summary) in best.items():
        share = summary["forwardSeconds"] / secs
        print(f"{'runner, ' + b:<28}{secs:>9.2f}{median[b]:>10.2f}{1000 * secs / n:>10.1f}{ratio(secs)}{share:>9.0%}")
    print(f"load average (1 min) over the runs: min {min(loads):.2f}, max {peak_load:.2f}; {n_cores} cores")
    if why:
        print(why)
    fastest = min(best, key=lambda b: best[b][0])
    print(json.dumps({
        "bench": "depth_throughput", "model": "depth-anything-v2-small (random weights)", "params_m": round(params / 1e6, 2),
        "images": n, "size": f"{width}x{height}", "device": args.device, "batch_size": args.batch_size,
        "cpu": platform.processor() or platform.machine(), "cores": n_cores, "threads": torch.get_num_threads(),
        "repeat": args.repeat, "load_average": {"min": min(loads), "max": peak_load, "samples": loads},
        "no_speedup_reason": why,
        "naive_images_per_s": round(n / t_naive, 3), "naive_s": round(t_naive, 3), "naive_median_s": round(m_naive, 3),
        "backends": {
            b: {"images_per_s": round(n / secs, 3), "seconds": round(secs, 3), "median_s": round(median[b], 3),
                "speedup": round(t_naive / secs, 3) if quiet else None, "forward_s": summary["forwardSeconds"],
                "backend": runners[b][1].backend.name, "parity": runners[b][1].parity,
                "batch": runners[b][1].batch_size(args.batch_size)}
            for b, (secs, summary) in best.items()
        },
        "fastest": fastest, "speedup": round(t_naive / best[fastest][0], 3) if quiet else None,
    }))


if __name__ == "__main__":
    main()
