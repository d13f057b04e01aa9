"""Depth throughput: the runner's DepthBatch path on each depth backend vs a naive transformers loop.

Same model (the published Depth-Anything-V2-Small architecture at 518 px, random weights, built
offline), same images, same machine, one process. Paths: the naive per-image transformers
pipeline, then the runner with each installed backend (SPATIALFORGE_DEPTH_BACKEND=torch,
onnxruntime, openvino), interleaved `--repeat` times; the best run of each counts. The ONNX
export and parity check happen before timing (as at image build or first use).

    python bench/depth_throughput.py                      # 8 images of 640x480 (a few minutes on 2 CPU cores)
    python bench/depth_throughput.py --images 200 --size 1280x720 --device cuda

Prints a table, then one JSON line.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
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
    return ctx, est


def runner_path(ctx, root: Path, images_dir: Path, batch_size: int, backend: str) -> tuple[float, dict]:
    """The runner's DepthBatch stage through run_local."""
    import yaml

    from spatialforge.runner.app import run_local

    manifest = root / f"bench-{backend}.yaml"
    manifest.write_text(yaml.safe_dump({
        "apiVersion": "spatialforge.io/v1alpha1", "kind": "DepthBatch", "metadata": {"name": ctx.name, "namespace": "bench"},
        "spec": {"inputs": [images_dir.as_uri() + "/"], "output": {"uri": (root / "runner-out").as_uri()}, "batchSize": batch_size},
    }))
    t0 = time.perf_counter()
    outcome = run_local(manifest, env=dict(ctx.env), ctx=ctx, show_progress=False)
    seconds = time.perf_counter() - t0
    if not outcome.ok:
        raise SystemExit(f"runner ({backend}) failed: {outcome.reason}")
    return seconds, outcome.results[0].summary


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--images", type=int, default=8)
    parser.add_argument("--size", default="640x480", help="WIDTHxHEIGHT of the generated images")
    parser.add_argument("--batch-size", type=int, default=4)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--repeat", type=int, default=2, help="Interleaved runs per path; the best is kept.")
    parser.add_argument("--backends", default=None, help="Comma list (default: every installed one).")
    args = parser.parse_args()
    import importlib.util

    import torch

    from spatialforge.runner.models.backends import BACKENDS
    from spatialforge.runner.models.configs import save_random, v2_small_config

    wanted = args.backends.split(",") if args.backends else [b for b in BACKENDS if b == "torch" or importlib.util.find_spec(b)]
    width, height = (int(v) for v in args.size.lower().split("x"))
    with tempfile.TemporaryDirectory(prefix="sf-bench-") as tmp:
        root = Path(tmp)
        model_dir = root / "depth-anything-v2-small-relative"
        save_random(v2_small_config(), str(model_dir))
        from transformers import AutoModelForDepthEstimation

        params = sum(p.numel() for p in AutoModelForDepthEstimation.from_pretrained(str(model_dir)).parameters())
        images = make_images(root / "images", args.images, width, height)
        print(f"model: Depth-Anything-V2-Small architecture at 518 px, random weights, {params / 1e6:.1f} M parameters")
        print(f"images: {args.images} x {width}x{height} JPEG; device {args.device}; torch threads {torch.get_num_threads()}")
        pipe = make_pipeline(model_dir, args.device)
        runners = {}
        for backend in wanted:
            t0 = time.perf_counter()
            runners[backend] = make_runner(root, args.device, backend)
            est = runners[backend][1]
            print(f"{backend}: ready in {time.perf_counter() - t0:.1f} s (export + parity check + warm-up), "
                  f"backend {est.backend.name}, relative difference from transformers {est.parity}")
        naive_runs: list[float] = []
        runs: dict[str, list[tuple[float, dict]]] = {b: [] for b in wanted}
        for _ in range(args.repeat):  # interleaved, so a noisy neighbour hurts every path alike
            naive_runs.append(naive_loop(pipe, images, root / "naive-out"))
            for backend, (ctx, _est) in runners.items():
                runs[backend].append(runner_path(ctx, root, root / "images", args.batch_size, backend))
        print(f"runs (s): naive {[round(t, 1) for t in naive_runs]}, "
              + ", ".join(f"{b} {[round(t, 1) for t, _ in r]}" for b, r in runs.items()))
    n, t_naive = args.images, min(naive_runs)
    best = {b: min(r, key=lambda x: x[0]) for b, r in runs.items()}
    print(f"{'path':<28}{'seconds':>10}{'images/s':>10}{'ms/image':>10}{'speed-up':>10}{'forward':>9}")
    print(f"{'naive pipeline loop':<28}{t_naive:>10.2f}{n / t_naive:>10.3f}{1000 * t_naive / n:>10.1f}{1.0:>9.2f}x")
    for b, (secs, summary) in best.items():
        share = summary["forwardSeconds"] / secs
        print(f"{'runner, ' + b:<28}{secs:>10.2f}{n / secs:>10.3f}{1000 * secs / n:>10.1f}{t_naive / secs:>9.2f}x{share:>9.0%}")
    fastest = min(best, key=lambda b: best[b][0])
    print(json.dumps({
        "bench": "depth_throughput", "model": "depth-anything-v2-small (random weights)", "params_m": round(params / 1e6, 2),
        "images": n, "size": f"{width}x{height}", "device": args.device, "batch_size": args.batch_size,
        "cpu": platform.processor() or platform.machine(), "threads": torch.get_num_threads(), "repeat": args.repeat,
        "naive_images_per_s": round(n / t_naive, 3), "naive_s": round(t_naive, 3),
        "backends": {
            b: {"images_per_s": round(n / secs, 3), "seconds": round(secs, 3), "speedup": round(t_naive / secs, 3),
                "forward_s": summary["forwardSeconds"], "parity": runners[b][1].parity}
            for b, (secs, summary) in best.items()
        },
        "fastest": fastest, "speedup": round(t_naive / best[fastest][0], 3),
    }))


if __name__ == "__main__":
    main()
