"""Reconstruction accuracy, wall time and peak memory per quality preset, on a known scene.

Renders a walk through a furnished 4.4 x 5.2 m room with plaster-like walls (runner.synthetic:
`furnished_room`, `walk`): 60 s by default, about 9.8 m, turning 360 degrees and ending where
it began, to an MP4 at 640x480. Then runs the ReconstructionJob stage on it at each preset,
each in its own process (so peak RSS is that preset's), asking for every output. Depth is
- `--depth truth` (default): the scene's rendered depth at each keyframe;
- `--depth mono`: that depth as a monocular network gets it wrong (runner.synthetic:
  `MonoErrors`): a per-frame scale error (`--mono-scale`, sigma 4 %), a smooth low-frequency
  warp (`--mono-warp`, at most +-3 %), depth smeared across object edges (`--mono-edge-px`, 3 px of a
  518 px network input) and per-pixel noise (`--mono-noise`, 1 %); 0 turns one off;
- `--mono-seed N`: another draw of those errors (the global scale's floor differs per draw);
- `--depth mono:warp` (or `mono:scale`, `mono:edge`, `mono:noise`): that one error alone;
- `--depth v2-small`: the real V2-Small architecture with random weights (time only).

`--ablation` runs true depth, each error alone and all four together, and prints each one's
own effect as a table.

Reported per preset: wall time, peak RSS, ATE (RMSE of camera positions, anchored at the
first keyframe; after the best rigid alignment of the whole path; and after the best rigid
alignment and scale) and its maximum, worst
rotation error, loop-closing gap (position error of
the last keyframe, which stands where the first did), mesh accuracy p50/p95 (distance of
mesh vertices to the true surfaces), completeness at 10 and 20 mm (share of the true visible
surface within that distance of the mesh), floor-plan area error and room count, and the sizes of the mesh and of
its web-sized copy (what the console's viewer opens).

With monocular depth, also the global scale: `scale_floor_pct`, the mean of the scale errors
drawn for every frame whose depth the stage used (the keyframes and the frames between them
that vote on the scale, `--scale-frames`; the best any estimate from this depth can do:
monocular video has no other scale) and `scale_floor_keyframes_pct`, the keyframes' alone,
`scale_votes`, what the manifest says of the votes, `scale_err_pct`, the reconstruction's own (from the similarity that maps
its cameras onto the true ones), and mesh p50/p95 and completeness at 20 mm after that
similarity (`*_sim3`): the geometry with that one number taken out. `rss_by_stage_mb`: each
stage's peak RSS, and the overall peak and when it came, from /proc every 20 ms.

    python bench/reconstruct.py                          # the full 60 s walk, all presets
    python bench/reconstruct.py --seconds 15 --presets standard
    python bench/reconstruct.py --depth mono --presets standard
    python bench/reconstruct.py --depth truth,mono --presets standard
    python bench/reconstruct.py --ablation --presets standard

Prints a table, then one JSON line.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

FULL = (640, 480)
ABLATION = ("truth", "mono:scale", "mono:warp", "mono:edge", "mono:noise", "mono")
DEPTHS = (*ABLATION, "v2-small")
FOCAL = 500.0


def scene(args: argparse.Namespace) -> tuple[object, object, list[np.ndarray]]:
    from spatialforge.runner.synthetic import PinholeCamera, furnished_room, walk

    n = int(round(args.seconds * args.fps))
    # A cut of the walk keeps its pace: fraction of the 60 s loop.
    poses = walk(n, fraction=min(1.0, args.seconds / 60.0))
    return furnished_room(), PinholeCamera(width=FULL[0], height=FULL[1], fx=FOCAL, fy=FOCAL), poses


def similarity(est: np.ndarray, gt: np.ndarray, *, with_scale: bool = False) -> tuple[float, np.ndarray, np.ndarray]:
    """(c, R, t) of the rigid motion (and, `with_scale`, the scale c) that best maps `est` onto
    `gt` (Umeyama): gt ~ c R est + t."""
    mu_e, mu_g = est.mean(0), gt.mean(0)
    e, g = est - mu_e, gt - mu_g
    U, sv, Vt = np.linalg.svd(g.T @ e / len(est))
    D = np.diag([1.0, 1.0, np.sign(np.linalg.det(U @ Vt))])
    R = U @ D @ Vt
    c = float(np.trace(np.diag(sv) @ D) / np.mean(np.sum(e**2, axis=1))) if with_scale else 1.0
    return c, R, mu_g - c * R @ mu_e


def aligned_rmse(est: np.ndarray, gt: np.ndarray, *, with_scale: bool = False) -> float:
    """RMSE of positions after `similarity`. The scale-free figure is what monocular depth can
    determine: its global scale is known only to the per-frame scale error over the root of
    the frame count."""
    c, R, t = similarity(est, gt, with_scale=with_scale)
    return float(np.sqrt(np.mean(np.sum((c * est @ R.T + t - gt) ** 2, axis=1))))


def mono_errors(args: argparse.Namespace, depth: str):
    """The MonoErrors a `--depth` entry asks for (None for true depth)."""
    from spatialforge.runner.synthetic import MonoErrors

    if not depth.startswith("mono"):
        return None
    full = MonoErrors(scale=args.mono_scale, warp=args.mono_warp, edge_px=args.mono_edge_px, noise=args.mono_noise)
    if depth == "mono":
        return full
    return full.only({"mono:scale": "scale", "mono:warp": "warp", "mono:edge": "edge_px", "mono:noise": "noise"}[depth])


def metrics(shard: Path, room, cam, poses: list[np.ndarray], mono: bool) -> dict:
    """Trajectory, mesh and floor-plan errors of one run against the rendered truth."""
    import open3d as o3d

    from spatialforge.runner.synthetic import render

    traj = json.loads((shard / "trajectory.json").read_text())
    manifest = json.loads((shard / "manifest.json").read_text())
    frames = [f for f in traj["frames"] if f["cameraToWorld"] is not None]
    anchor = poses[frames[0]["frame"]]
    first = np.linalg.inv(anchor)
    errs, rots = [], []
    for f in frames:
        est, gt = np.asarray(f["cameraToWorld"]), first @ poses[f["frame"]]
        errs.append(float(np.linalg.norm(gt[:3, 3] - est[:3, 3])))
        cos = np.clip((np.trace(gt[:3, :3].T @ est[:3, :3]) - 1) / 2, -1.0, 1.0)
        rots.append(float(np.degrees(np.arccos(cos))))
    errs_a = np.asarray(errs)
    est_t = np.asarray([np.asarray(f["cameraToWorld"])[:3, 3] for f in frames])
    gt_t = np.asarray([(first @ poses[f["frame"]])[:3, 3] for f in frames])
    out = {
        "keyframes": manifest["keyframes"], "posed": manifest["posed"], "loop_closures": manifest["poseGraph"]["loopClosures"],
        "ate_mm": round(1000 * float(np.sqrt(np.mean(errs_a**2))), 3), "ate_max_mm": round(1000 * float(errs_a.max()), 3),
        "ate_aligned_mm": round(1000 * aligned_rmse(est_t, gt_t), 3),
        "ate_sim3_mm": round(1000 * aligned_rmse(est_t, gt_t, with_scale=True), 3),
        "rot_max_deg": round(max(rots), 4), "loop_gap_mm": round(1000 * errs[-1], 3),
    }
    full, web = manifest["outputs"]["mesh"], manifest["outputs"]["webMesh"]  # what the console's viewer opens
    out.update(mesh_triangles=full["triangles"], mesh_mb=round(full["bytes"] / 1e6, 2),
               web_triangles=web["triangles"], web_mb=round(web["bytes"] / 1e6, 2))
    mesh = o3d.io.read_triangle_mesh(str(shard / "mesh.ply"))
    verts = np.asarray(mesh.vertices)
    world = verts @ anchor[:3, :3].T + anchor[:3, 3]  # reconstruction frame -> room frame
    dist = room.distance(world)
    out["mesh_p50_mm"] = round(1000 * float(np.percentile(dist, 50)), 3)
    out["mesh_p95_mm"] = round(1000 * float(np.percentile(dist, 95)), 3)
    if mono:
        # Monocular video cannot know its global scale better than the network's mean scale
        # (`scale_floor_pct`): the same figures with that one number taken out, by the
        # similarity that maps the estimated cameras onto the true ones.
        c, R, t = similarity(est_t, gt_t, with_scale=True)
        out["scale_err_pct"] = round(100 * (1.0 / c - 1.0), 3)
        sim_verts = c * verts @ R.T + t
        sim_dist = room.distance(sim_verts @ anchor[:3, :3].T + anchor[:3, 3])
        out["mesh_p50_sim3_mm"] = round(1000 * float(np.percentile(sim_dist, 50)), 3)
        out["mesh_p95_sim3_mm"] = round(1000 * float(np.percentile(sim_dist, 95)), 3)
    # Completeness: the true surface seen by the keyframes (every 4th px) within 10 mm of the mesh.
    truth = []
    w, h = traj["intrinsics"]["width"], traj["intrinsics"]["height"]
    small = cam.scaled(w, h)
    K = small.K
    for f in frames[:: max(1, len(frames) // 25)]:
        T = poses[f["frame"]]
        depth = render(room, small, T, supersample=1)[1][::4, ::4]
        vs, us = np.mgrid[0:h:4, 0:w:4]
        ok = depth < 10.0
        cam_pts = np.stack([(us - K[0, 2]) / K[0, 0] * depth, (vs - K[1, 2]) / K[1, 1] * depth, depth], -1)[ok]
        truth.append(cam_pts @ (first @ T)[:3, :3].T + (first @ T)[:3, 3])
    raycast = o3d.t.geometry.RaycastingScene()
    raycast.add_triangles(o3d.t.geometry.TriangleMesh.from_legacy(mesh))
    d_gt = raycast.compute_distance(o3d.core.Tensor(np.concatenate(truth).astype(np.float32))).numpy()
    out["completeness_10mm"] = round(float(np.mean(d_gt < 0.010)), 4)
    out["completeness_20mm"] = round(float(np.mean(d_gt < 0.020)), 4)
    if mono:
        aligned = o3d.geometry.TriangleMesh(mesh)
        aligned.vertices = o3d.utility.Vector3dVector(sim_verts)
        raycast = o3d.t.geometry.RaycastingScene()
        raycast.add_triangles(o3d.t.geometry.TriangleMesh.from_legacy(aligned))
        d_sim = raycast.compute_distance(o3d.core.Tensor(np.concatenate(truth).astype(np.float32))).numpy()
        out["completeness_20mm_sim3"] = round(float(np.mean(d_sim < 0.020)), 4)
    plan = manifest.get("floorplan")
    if plan:
        out["floor_area_m2"] = plan["areaM2"]
        out["floor_area_err_pct"] = round(100 * (plan["areaM2"] - room.floor_area) / room.floor_area, 2)
        out["room_count"] = plan["roomCount"]
    out["scale_range"] = [round(min(f["depthScale"] for f in frames), 4), round(max(f["depthScale"] for f in frames), 4)] if mono else None
    out["scale_votes"] = manifest.get("scaleVotes")
    return out


def keyframe_frames(shard: Path) -> list[int]:
    return [f["frame"] for f in json.loads((shard / "trajectory.json").read_text())["frames"]]


def child(args: argparse.Namespace) -> None:
    """One preset in this process: run the stage, print its figures as JSON."""
    from spatialforge.crds.v1alpha1.common import ModelVariant
    from spatialforge.runner.app import parse_resource
    from spatialforge.runner.devices import choose_device
    from spatialforge.runner.models.configs import save_random, v2_small_config
    from spatialforge.runner.settings import RunnerSettings
    from spatialforge.runner.stages.base import RunContext
    from spatialforge.runner.stages.reconstruct import ReconstructStage
    from spatialforge.runner.synthetic import monocular_like, render

    root = Path(args.workdir)
    room, cam, poses = scene(args)
    errors = mono_errors(args, args.depth)
    mono = errors is not None

    drawn: dict[int, float] = {}  # each frame's scale error as drawn (geometric mean of mono / true)

    def provider(keyframes: list) -> tuple[list[np.ndarray], bool]:
        out = []
        for k in keyframes:
            h, w = k.rgb.shape[:2]
            depth = render(room, cam.scaled(w, h), poses[k.index], supersample=1)[1]
            if mono:
                wrong = monocular_like(depth, np.random.default_rng([args.mono_seed, k.index] if args.mono_seed else k.index), errors)
                ok = (depth > 0) & (depth < 8.0) & (wrong > 0)
                drawn[k.index] = float(np.exp(np.mean(np.log(wrong[ok] / depth[ok]))))
                depth = wrong
            out.append(depth)
        return out, True

    if args.depth == "v2-small":
        save_random(v2_small_config(ModelVariant.metric_indoor), str(root / "models" / "depth-anything-v2-small-metric-indoor"))
    stage = ReconstructStage(depth_provider=None if args.depth == "v2-small" else provider, scale_frames=args.scale_frames)
    env = {**os.environ, "SPATIALFORGE_MODEL_DIR": str(root / "models"), "SPATIALFORGE_TERMINATION_LOG": str(root / "term")}
    ctx = RunContext(namespace="bench", name=f"recon-{args.child}", settings=RunnerSettings.from_env(env), device=choose_device(args.device))
    resource_doc = parse_resource({
        "apiVersion": "spatialforge.io/v1alpha1", "kind": "ReconstructionJob",
        "metadata": {"name": ctx.name, "namespace": "bench"},
        "spec": {"input": (root / "walk.mp4").as_uri(), "quality": args.child, "depthMax": 8.0,
                 "intrinsics": {"fx": FOCAL, "fy": FOCAL, "cx": cam.K[0, 2], "cy": cam.K[1, 2]},
                 "output": {"uri": (root / "out").as_uri(), "formats": ["trajectory", "pointcloud", "mesh", "floorplan"]}},
    }, allow_local=True)
    started = time.time()
    t0 = time.perf_counter()
    result = stage.run(resource_doc.spec, ctx)
    wall = time.perf_counter() - t0
    rss_mb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    shard = root / "out" / "bench" / ctx.name / "shard-00000"
    figures = {"wall_s": round(wall, 2), "peak_rss_mb": round(rss_mb), **{f"{k}_s": round(v, 2) for k, v in result.summary["timings"].items()}}
    if args.depth != "v2-small":
        figures.update(metrics(shard, room, cam, poses, mono))
    figures["started"] = started  # wall clock: the parent's RSS samples of this process line up with the stages
    if drawn:
        # The floor: the mean of the scale errors drawn for every frame whose depth the stage
        # asked for (keyframes and the frames that vote on the scale); and the keyframes' alone.
        figures["scale_floor_pct"] = round(100 * (float(np.mean(list(drawn.values()))) - 1.0), 3)
        keyframe_draws = [drawn[i] for i in keyframe_frames(shard)]
        figures["scale_floor_keyframes_pct"] = round(100 * (float(np.mean(keyframe_draws)) - 1.0), 3)
    print(json.dumps(figures))


def run_sampled(cmd: list[str]) -> tuple[int, str, str, list[tuple[float, int]]]:
    """Run a child, reading its RSS from /proc every 20 ms (from this process: a sampler thread
    inside the child waits for the GIL through long native calls and misses short peaks)."""
    page = os.sysconf("SC_PAGE_SIZE")
    trace: list[tuple[float, int]] = []
    with tempfile.TemporaryFile("w+") as out, tempfile.TemporaryFile("w+") as err:
        proc = subprocess.Popen(cmd, stdout=out, stderr=err, text=True)
        while proc.poll() is None:
            try:
                with open(f"/proc/{proc.pid}/statm") as f:
                    trace.append((time.time(), int(f.read().split()[1]) * page))
            except (OSError, IndexError, ValueError):
                pass
            time.sleep(0.02)
        out.seek(0)
        err.seek(0)
        return proc.returncode, out.read(), err.read(), trace


def rss_by_stage(trace: list[tuple[float, int]], started: float, figures: dict) -> dict[str, float]:
    """Peak RSS (MB) in each stage's window and at its start (the stages run one after another,
    in the order of their timings), and when the overall peak came (seconds after the start)."""
    out: dict[str, float] = {}
    start = started
    for name in ("decode", "keyframes", "depth", "poses", "scale", "fusion", "floorplan", "write"):  # webMesh is inside write
        seconds = figures.get(f"{name}_s")
        if seconds is None:
            continue
        inside = [rss for t, rss in trace if start <= t <= start + seconds]
        if inside:
            out[name] = round(max(inside) / 2**20)
            out[f"{name}_start"] = round(inside[0] / 2**20)
        start += seconds
    during = [(t, rss) for t, rss in trace if t >= started]
    if during:
        t, rss = max(during, key=lambda x: x[1])
        out["peak"], out["peak_at_s"] = round(rss / 2**20), round(t - started, 2)
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seconds", type=float, default=60.0)
    parser.add_argument("--fps", type=float, default=10.0)
    parser.add_argument("--presets", default="draft,standard,high")
    parser.add_argument("--depth", default="truth",
                        help="truth, mono, mono:scale|warp|edge|noise or v2-small; a comma list runs each on the same video")
    parser.add_argument("--ablation", action="store_true", help="true depth, each monocular error alone, then all four")
    parser.add_argument("--mono-scale", type=float, default=0.04, help="sigma of the per-frame scale error")
    parser.add_argument("--mono-warp", type=float, default=0.03, help="peak of the low-frequency warp (relative)")
    parser.add_argument("--mono-edge-px", type=float, default=3.0, help="edge smear width, px of a 518 px input")
    parser.add_argument("--mono-noise", type=float, default=0.01, help="sigma of per-pixel noise")
    parser.add_argument("--mono-seed", type=int, default=0,
                        help="another draw of the errors (0: each keyframe's frame index seeds its own, as before)")
    parser.add_argument("--scale-frames", type=int, default=None,
                        help="frames between keyframes that vote on the global scale (default: the preset's; 0: none)")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--child", help=argparse.SUPPRESS)
    parser.add_argument("--workdir", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.ablation:
        args.depth = ",".join(ABLATION)
    for depth in args.depth.split(","):
        if depth not in DEPTHS:
            raise SystemExit(f"--depth {depth}: expected one of {', '.join(DEPTHS)}")
    if args.child:
        child(args)
        return

    from spatialforge.runner.synthetic import path_length, render, write_video

    results: dict[str, dict] = {}
    with tempfile.TemporaryDirectory(prefix="sf-bench-recon-") as tmp:
        root = Path(tmp)
        room, cam, poses = scene(args)
        t0 = time.perf_counter()
        write_video(root / "walk.mp4", [render(room, cam, T, supersample=1)[0] for T in poses], fps=args.fps)
        print(f"video: {len(poses)} frames {FULL[0]}x{FULL[1]} @ {args.fps} fps ({args.seconds:.0f} s), path "
              f"{path_length(poses):.2f} m, rendered in {time.perf_counter() - t0:.0f} s", flush=True)
        depths = args.depth.split(",")
        for depth in depths:
            for preset in args.presets.split(","):
                key = preset if len(depths) == 1 else f"{preset}:{depth}"
                cmd = [sys.executable, __file__, "--child", preset, "--workdir", tmp, "--seconds", str(args.seconds),
                       "--fps", str(args.fps), "--depth", depth, "--device", args.device,
                       "--mono-scale", str(args.mono_scale), "--mono-warp", str(args.mono_warp),
                       "--mono-edge-px", str(args.mono_edge_px), "--mono-noise", str(args.mono_noise),
                       "--mono-seed", str(args.mono_seed)]
                if args.scale_frames is not None:
                    cmd += ["--scale-frames", str(args.scale_frames)]
                code, out, err, trace = run_sampled(cmd)
                if code != 0:
                    print(err[-4000:], file=sys.stderr)
                    raise SystemExit(f"preset {key} failed (exit {code})")
                results[key] = json.loads(out.strip().splitlines()[-1])
                results[key]["rss_by_stage_mb"] = rss_by_stage(trace, results[key].pop("started"), results[key])
                print(f"{key}: {results[key]}", flush=True)
    cols = [("wall_s", "wall s", ".1f"), ("peak_rss_mb", "RSS MB", ".0f"), ("ate_mm", "ATE mm", ".2f"),
            ("ate_aligned_mm", "ATE al", ".2f"), ("ate_sim3_mm", "ATE s3", ".2f"), ("rot_max_deg", "rot deg", ".3f"), ("loop_gap_mm", "gap mm", ".2f"), ("mesh_p50_mm", "p50 mm", ".2f"),
            ("mesh_p95_mm", "p95 mm", ".2f"), ("completeness_10mm", "c@10", ".3f"), ("completeness_20mm", "c@20", ".3f"), ("floor_area_err_pct", "area %", ".2f"),
            ("room_count", "rooms", "d"), ("mesh_mb", "mesh MB", ".1f"), ("web_mb", "web MB", ".1f"),
            ("scale_floor_keyframes_pct", "floor kf", ".2f"), ("scale_floor_pct", "floor %", ".2f"), ("scale_err_pct", "scale %", ".2f"), ("mesh_p95_sim3_mm", "p95 s3", ".2f"),
            ("completeness_20mm_sim3", "c@20 s3", ".3f")]
    print(f"{'preset':<22}" + "".join(f"{label:>10}" for _, label, _ in cols))
    for preset, r in results.items():
        print(f"{preset:<22}" + "".join(f"{format(r[k], fmt) if r.get(k) is not None else '-':>10}" for k, _, fmt in cols))
    print(json.dumps({"bench": "reconstruct", "video_s": args.seconds, "fps": args.fps, "size": f"{FULL[0]}x{FULL[1]}",
                      "frames": len(poses), "path_m": round(path_length(poses), 3), "depth": args.depth,
                      "mono": {"scale": args.mono_scale, "warp": args.mono_warp, "edge_px": args.mono_edge_px,
                               "noise": args.mono_noise, "seed": args.mono_seed},
                      "scale_frames": args.scale_frames,
                      "load_avg": [round(x, 2) for x in os.getloadavg()],
                      "device": args.device, "presets": results}))


if __name__ == "__main__":
    main()
