"""Reconstruction wall time per stage (decode, keyframes, depth, poses, fusion, write) per preset.

Renders a synthetic walk through a textured room to an MP4, then runs the ReconstructionJob
stage on it at each quality preset. Depth comes from:
- `--depth truth` (default): the scene's rendered depth at each keyframe (no network), so poses
  and fusion work on realistic geometry; the "depth" column is then the render time;
- `--depth tiny`: the tiny Depth Anything (random weights, real code path);
- `--depth v2-small`: the real V2-Small architecture (random weights; ~1.4 s/keyframe on 2 CPU cores).
The network alone is benchmarked by depth_throughput.py.

    python bench/reconstruct.py                 # 10 s video, 480x360 @ 15 fps
    python bench/reconstruct.py --seconds 60    # the full minute
    python bench/reconstruct.py --presets draft --depth v2-small --device cuda

Prints a table, then one JSON line.
"""

from __future__ import annotations

import argparse
import json
import os
import tempfile
import time
from pathlib import Path

import numpy as np
import yaml


def trajectory_error(manifest_uri: str, truth: list[np.ndarray]) -> tuple[float, float]:
    """Worst rotation (degrees) and position (metres) error of the written trajectory."""
    from spatialforge.runner.storage.local import file_path

    traj = json.loads((file_path(manifest_uri).parent / "trajectory.json").read_text())
    frames = [f for f in traj["frames"] if f["cameraToWorld"] is not None]
    first = np.linalg.inv(truth[frames[0]["frame"]])
    worst_r = worst_t = 0.0
    for f in frames:
        est, gt = np.asarray(f["cameraToWorld"]), first @ truth[f["frame"]]
        cos = np.clip((np.trace(gt[:3, :3].T @ est[:3, :3]) - 1) / 2, -1.0, 1.0)
        worst_r = max(worst_r, float(np.degrees(np.arccos(cos))))
        worst_t = max(worst_t, float(np.linalg.norm(gt[:3, 3] - est[:3, 3])))
    return worst_r, worst_t


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seconds", type=float, default=10.0)
    parser.add_argument("--fps", type=float, default=15.0)
    parser.add_argument("--size", default="480x360")
    parser.add_argument("--presets", default="draft,standard,high")
    parser.add_argument("--depth", choices=["truth", "tiny", "v2-small"], default="truth")
    parser.add_argument("--device", default="cpu")
    args = parser.parse_args()

    from spatialforge.crds.v1alpha1.common import ModelVariant
    from spatialforge.runner.app import parse_resource
    from spatialforge.runner.devices import choose_device
    from spatialforge.runner.models.configs import save_random, tiny_config, v2_small_config
    from spatialforge.runner.stages.base import RunContext
    from spatialforge.runner.stages.reconstruct import ReconstructStage
    from spatialforge.runner.synthetic import PinholeCamera, Room, look_pose, render, write_video

    width, height = (int(v) for v in args.size.lower().split("x"))
    n_frames = int(round(args.seconds * args.fps))
    cam = PinholeCamera(width=width, height=height, fx=0.8 * width, fy=0.8 * width)
    room = Room()
    results: dict[str, dict] = {}
    with tempfile.TemporaryDirectory(prefix="sf-bench-recon-") as tmp:
        root = Path(tmp)
        t0 = time.perf_counter()
        frames = []
        poses = []
        for i in range(n_frames):  # a slow sideways walk with a gentle turn
            s = i / max(n_frames - 1, 1)
            poses.append(look_pose((-0.6 + 1.2 * s, 0.05 * np.sin(6 * s), 0.3 * np.sin(3 * s)),
                                   yaw_deg=-15 + 30 * s, pitch_deg=3 * np.sin(5 * s)))
            frames.append(render(room, cam, poses[-1], supersample=1)[0])
        video = write_video(root / "walk.mp4", frames, fps=args.fps)
        del frames
        t_render = time.perf_counter() - t0
        print(f"video: {n_frames} frames {width}x{height} @ {args.fps} fps ({args.seconds:.0f} s), rendered in {t_render:.1f}s")
        cfg = (v2_small_config if args.depth == "v2-small" else tiny_config)(ModelVariant.metric_indoor)
        save_random(cfg, str(root / "models" / "depth-anything-v2-small-metric-indoor"))

        def truth(keyframes: list) -> tuple[list[np.ndarray], bool]:
            """Rendered depth at each keyframe's pose, at the working resolution."""
            out = []
            for k in keyframes:
                h, w = k.rgb.shape[:2]
                scaled = PinholeCamera(width=w, height=h, fx=cam.fx * w / width, fy=cam.fy * h / height)
                out.append(render(room, scaled, poses[k.index], supersample=1)[1])
            return out, True

        stage = ReconstructStage(depth_provider=truth if args.depth == "truth" else None)
        env = {**os.environ, "SPATIALFORGE_MODEL_DIR": str(root / "models"), "SPATIALFORGE_TERMINATION_LOG": str(root / "term")}
        ctx = RunContext(namespace="bench", name="recon", env=env, device=choose_device(args.device))
        for preset in args.presets.split(","):
            manifest = root / f"{preset}.yaml"
            manifest.write_text(yaml.safe_dump({
                "apiVersion": "spatialforge.io/v1alpha1", "kind": "ReconstructionJob",
                "metadata": {"name": f"recon-{preset}", "namespace": "bench"},
                "spec": {"input": video.as_uri(), "output": {"uri": (root / "out").as_uri()}, "quality": preset,
                         "depthMax": 30.0, "intrinsics": {"fx": cam.fx, "fy": cam.fy}},
            }))
            resource = parse_resource(yaml.safe_load(manifest.read_text()), allow_local=True)
            ctx.name = resource.metadata["name"]
            t0 = time.perf_counter()
            result = stage.run(resource.spec, ctx)
            wall = time.perf_counter() - t0
            summary = result.summary
            rot_err, trans_err = trajectory_error(result.manifest_uri, poses)
            results[preset] = {
                "wall_s": round(wall, 3), "keyframe_count": summary["keyframes"], "posed": summary["posed"],
                "points": summary["points"], **{f"{k}_s": round(v, 3) for k, v in summary["timings"].items()},
                "max_rot_err_deg": round(rot_err, 4), "max_trans_err_mm": round(1000 * trans_err, 2),
            }
    stages = ["decode", "keyframes", "depth", "poses", "fusion", "write"]
    print(f"{'preset':<10}{'keyfr':>6}" + "".join(f"{s:>10}" for s in stages) + f"{'wall':>10}{'rot deg':>9}{'pos mm':>8}")
    for preset, r in results.items():
        print(f"{preset:<10}{r['keyframe_count']:>6}" + "".join(f"{r[s + '_s']:>10.2f}" for s in stages)
              + f"{r['wall_s']:>10.2f}{r['max_rot_err_deg']:>9.3f}{r['max_trans_err_mm']:>8.1f}")
    print("(rot/pos: worst keyframe pose error against the rendered truth, relative to the first keyframe)")
    print(json.dumps({"bench": "reconstruct", "video_s": args.seconds, "fps": args.fps, "size": f"{width}x{height}",
                      "frames": n_frames, "depth": args.depth, "device": args.device, "presets": results}))


if __name__ == "__main__":
    main()
