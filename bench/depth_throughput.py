"""Depth throughput: the runner's DepthBatch path vs a naive transformers pipeline loop.

Same model (the published Depth-Anything-V2-Small architecture, random weights, built offline),
same images, same machine, one process; the three paths run interleaved `--repeat` times and
the best run of each counts. Also the bare model forward time at the runner's batch size (the floor).

    python bench/depth_throughput.py                      # 12 images of 640x480 (a few minutes on 2 CPU cores)
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


def make_runner(root: Path, device: str):
    """A RunContext with the model loaded (and warmed) beforehand, as in a pod."""
    from spatialforge.crds.v1alpha1.common import DepthModel
    from spatialforge.runner.devices import choose_device
    from spatialforge.runner.stages.base import RunContext

    env = {**os.environ, "SPATIALFORGE_MODEL_DIR": str(root), "SPATIALFORGE_TERMINATION_LOG": str(root / "term.log")}
    ctx = RunContext(namespace="bench", name="depth", env=env, device=choose_device(device))
    ctx.estimator(DepthModel()).predict_rgb([np.zeros((480, 640, 3), np.uint8)])  # warm-up
    return ctx


def runner_path(ctx, root: Path, images_dir: Path, batch_size: int) -> tuple[float, dict]:
    """The runner's DepthBatch stage through run_local."""
    import yaml

    from spatialforge.runner.app import run_local

    env = dict(ctx.env)
    manifest = root / "bench.yaml"
    manifest.write_text(yaml.safe_dump({
        "apiVersion": "spatialforge.io/v1alpha1", "kind": "DepthBatch", "metadata": {"name": "depth", "namespace": "bench"},
        "spec": {"inputs": [images_dir.as_uri() + "/"], "output": {"uri": (root / "runner-out").as_uri()}, "batchSize": batch_size},
    }))
    t0 = time.perf_counter()
    outcome = run_local(manifest, env=env, ctx=ctx, show_progress=False)
    seconds = time.perf_counter() - t0
    if not outcome.ok:
        raise SystemExit(f"runner failed: {outcome.reason}")
    return seconds, outcome.results[0].summary


def bare_forward(model_dir: Path, images: list[Path], device: str, batch_size: int) -> float:
    """Model forward only, batched as the runner batches (no decode, no resize, no writes)."""
    import torch
    from transformers import AutoModelForDepthEstimation

    from spatialforge.runner.models.estimator import Preprocessing

    model = AutoModelForDepthEstimation.from_pretrained(str(model_dir), dtype=torch.float32).to(device).eval()
    pre = Preprocessing()
    arrays = [pre(np.asarray(Image.open(p).convert("RGB"))) for p in images]
    batches = [torch.from_numpy(np.stack(arrays[i : i + batch_size])).to(device) for i in range(0, len(arrays), batch_size)]
    with torch.inference_mode():
        model(pixel_values=batches[0][:1])
        if device.startswith("cuda"):
            torch.cuda.synchronize()
        t0 = time.perf_counter()
        for batch in batches:
            model(pixel_values=batch)
        if device.startswith("cuda"):
            torch.cuda.synchronize()
    return time.perf_counter() - t0


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--images", type=int, default=12)
    parser.add_argument("--size", default="640x480", help="WIDTHxHEIGHT of the generated images")
    parser.add_argument("--batch-size", type=int, default=4)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--repeat", type=int, default=2, help="Interleaved runs per path; the best is kept.")
    args = parser.parse_args()
    import torch

    from spatialforge.runner.models.configs import save_random, v2_small_config

    width, height = (int(v) for v in args.size.lower().split("x"))
    with tempfile.TemporaryDirectory(prefix="sf-bench-") as tmp:
        root = Path(tmp)
        model_dir = root / "depth-anything-v2-small-relative"
        save_random(v2_small_config(), str(model_dir))
        from transformers import AutoModelForDepthEstimation

        params = sum(p.numel() for p in AutoModelForDepthEstimation.from_pretrained(str(model_dir)).parameters())
        images = make_images(root / "images", args.images, width, height)
        print(f"model: Depth-Anything-V2-Small architecture, random weights, {params / 1e6:.1f} M parameters")
        print(f"images: {args.images} x {width}x{height} JPEG; device {args.device}; torch threads {torch.get_num_threads()}")
        pipe, ctx = make_pipeline(model_dir, args.device), make_runner(root, args.device)
        naive_runs, runner_runs, bare_runs = [], [], []
        for _ in range(args.repeat):  # interleaved, so a noisy neighbour hurts every path alike
            naive_runs.append(naive_loop(pipe, images, root / "naive-out"))
            runner_runs.append(runner_path(ctx, root, root / "images", args.batch_size))
            bare_runs.append(bare_forward(model_dir, images, args.device, args.batch_size))
        t_naive, t_bare = min(naive_runs), min(bare_runs)
        t_runner, summary = min(runner_runs, key=lambda r: r[0])
        print(f"runs (s): naive {[round(t, 1) for t in naive_runs]}, runner {[round(t, 1) for t, _ in runner_runs]}, "
              f"bare {[round(t, 1) for t in bare_runs]}")
    n = args.images
    rows = [("naive pipeline loop", t_naive), ("runner DepthBatch", t_runner), ("bare forward (floor)", t_bare)]
    print(f"{'path':<24}{'seconds':>10}{'images/s':>10}{'ms/image':>10}")
    for name, secs in rows:
        print(f"{name:<24}{secs:>10.2f}{n / secs:>10.3f}{1000 * secs / n:>10.1f}")
    print(f"runner speed-up over naive: {t_naive / t_runner:.2f}x; runner forward share {summary['forwardSeconds'] / t_runner:.0%}")
    print(json.dumps({
        "bench": "depth_throughput", "model": "depth-anything-v2-small (random weights)", "params_m": round(params / 1e6, 2),
        "images": n, "size": f"{width}x{height}", "device": args.device, "batch_size": args.batch_size,
        "cpu": platform.processor() or platform.machine(), "threads": torch.get_num_threads(),
        "naive_images_per_s": round(n / t_naive, 3), "runner_images_per_s": round(n / t_runner, 3),
        "bare_forward_images_per_s": round(n / t_bare, 3), "speedup": round(t_naive / t_runner, 3),
        "naive_s": round(t_naive, 3), "runner_s": round(t_runner, 3), "bare_forward_s": round(t_bare, 3),
        "repeat": args.repeat,
    }))


if __name__ == "__main__":
    main()
