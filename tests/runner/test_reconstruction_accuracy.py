"""Pose and surface accuracy on the furnished synthetic room (CPU, a cut of the bench's walk).

The bench (bench/reconstruct.py) runs the whole 60 s walk through the stage; these run the
same pose pipeline and fusion on a quarter of it, at the standard preset's working size.
"""

from __future__ import annotations

import numpy as np
import pytest

from spatialforge.runner.geometry.camera import Camera
from spatialforge.runner.geometry.fusion import fuse
from spatialforge.runner.geometry.single_view import single_view
from spatialforge.runner.geometry.tracking import estimate_poses
from spatialforge.runner.synthetic import PinholeCamera, furnished_room, monocular_like, render, render_path, walk

ROOM = furnished_room()
CAM = PinholeCamera(width=640, height=480, fx=500, fy=500).scaled(512, 384)  # standard working size


def _errors(poses: list, truth: list[np.ndarray]) -> tuple[np.ndarray, np.ndarray]:
    """Position (m) and rotation (deg) error per keyframe, anchored at the first."""
    first = np.linalg.inv(truth[0])
    pos, rot = [], []
    for est, gt in zip(poses, truth, strict=True):
        g = first @ gt
        pos.append(np.linalg.norm(g[:3, 3] - est[:3, 3]))
        rot.append(np.degrees(np.arccos(np.clip((np.trace(g[:3, :3].T @ est[:3, :3]) - 1) / 2, -1, 1))))
    return np.asarray(pos), np.asarray(rot)


@pytest.fixture(scope="module")
def quarter_walk() -> tuple[list[np.ndarray], list[np.ndarray], list[np.ndarray]]:
    """25 keyframes over the first quarter of the walk (the bench's keyframe spacing)."""
    truth = walk(25, fraction=0.25)
    return truth, *render_path(ROOM, CAM, truth)


def test_poses_and_surface_with_true_depth(quarter_walk):
    import open3d as o3d

    truth, rgbs, depths = quarter_walk
    result, scaled = estimate_poses(rgbs, depths, CAM.K, depth_max=8.0)
    assert result.posed == list(range(len(rgbs)))
    pos, rot = _errors(result.poses, truth)
    assert float(np.sqrt(np.mean(pos**2))) <= 0.003 and float(pos.max()) <= 0.005, pos
    assert float(rot.max()) <= 0.2, rot
    fused = fuse(rgbs, scaled, result.poses, CAM.K, voxel_size=0.02, depth_max=8.0)
    anchor = truth[0]
    verts = fused.mesh.vertex.positions.numpy().astype(np.float64)
    dist = ROOM.distance(verts @ anchor[:3, :3].T + anchor[:3, 3])
    assert float(np.percentile(dist, 95)) <= 0.005, np.percentile(dist, [50, 95])
    # Completeness: the surface the keyframes saw (every 8th px) within 10 mm of the mesh.
    scene = o3d.t.geometry.RaycastingScene()
    scene.add_triangles(fused.mesh)
    K, first = CAM.K, np.linalg.inv(anchor)
    pts = []
    for T, depth in zip(truth[::3], depths[::3], strict=True):
        vs, us = np.mgrid[0 : depth.shape[0] : 8, 0 : depth.shape[1] : 8]
        z = depth[vs, us]
        cam_pts = np.stack([(us - K[0, 2]) / K[0, 0] * z, (vs - K[1, 2]) / K[1, 1] * z, z], -1).reshape(-1, 3)
        rel = first @ T
        pts.append(cam_pts @ rel[:3, :3].T + rel[:3, 3])
    d = scene.compute_distance(o3d.core.Tensor(np.concatenate(pts).astype(np.float32))).numpy()
    assert float(np.mean(d < 0.010)) >= 0.95


def test_monocular_like_depth_within_2cm(quarter_walk):
    truth, rgbs, depths = quarter_walk
    rng = np.random.default_rng(5)
    noisy = [monocular_like(d, rng) for d in depths]
    result, _ = estimate_poses(rgbs, noisy, CAM.K, depth_max=8.0)
    assert len(result.posed) == len(rgbs)
    pos, rot = _errors(result.poses, truth)
    assert float(np.sqrt(np.mean(pos**2))) <= 0.02, pos
    assert float(rot.max()) <= 0.5, rot
    assert max(result.scales) - min(result.scales) > 0.03  # the per-frame scale errors were found


def test_a_closed_loop_closes():
    """A small loop (2.2 m, 360 degrees) that ends where it began: the graph closes it."""
    truth = walk(30, rx=0.3, rz=0.4)
    result, _ = estimate_poses(*render_path(ROOM, CAM, truth), CAM.K, depth_max=8.0)
    assert result.loops >= 1 and len(result.posed) == len(truth)
    pos, _ = _errors(result.poses, truth)
    gap = float(np.linalg.norm(result.poses[-1][:3, 3] - result.poses[0][:3, 3]))
    assert gap < 0.005 and float(pos[-1]) < 0.005, (gap, pos[-1])


def test_principal_point_rescales_about_pixel_centres():
    cam = Camera(fx=500, fy=500, cx=319.5, cy=239.5, width=640, height=480)
    small = cam.scaled(512, 384)
    assert small.cx == pytest.approx(255.5) and small.cy == pytest.approx(191.5)
    assert small.fx == pytest.approx(400.0)


def test_single_view_geometry_is_exact():
    T = walk(3)[1]
    rgb, depth = render(ROOM, CAM, T, supersample=1)
    result = single_view(rgb, depth, CAM.K, depth_max=8.0)
    assert result.n_points > 10_000 and result.n_triangles > 10_000
    world = result.points.astype(np.float64) @ T[:3, :3].T + T[:3, 3]
    assert float(ROOM.distance(world).max()) < 1e-4


def test_high_preset_tracks_at_512_and_scales_the_working_depth_in_place():
    """The high preset works at 768 px and tracks at POSE_MAX_SIDE: images resized on access
    (`_Resized`), depth resized edge-aware (`_resize_depth`), the poses carried over to 768 px,
    and the working-size maps scaled in place by the per-frame scales found (`_scale`)."""
    from spatialforge.crds.v1alpha1.reconstructionjob import QualityPreset, ReconstructionJobSpec
    from spatialforge.runner.geometry.keyframes import Keyframe
    from spatialforge.runner.settings import RunnerSettings
    from spatialforge.runner.stages.base import RunContext
    from spatialforge.runner.stages.reconstruct import MAX_SIDE, POSE_MAX_SIDE, ReconstructStage

    cam = PinholeCamera(width=640, height=480, fx=500, fy=500).scaled(768, 576)
    assert max(cam.width, cam.height) == MAX_SIDE[QualityPreset.high] > POSE_MAX_SIDE
    truth = walk(12, fraction=0.12)
    frames = [render(ROOM, cam, T, supersample=1) for T in truth]
    keyframes = [Keyframe(index=i, timestamp=i / 8, rgb=rgb, sharpness=1.0, motion=0.1)
                 for i, (rgb, _) in enumerate(frames)]
    # Per-frame scale errors as a monocular model makes them; the first frame sets the scale.
    errors = np.concatenate([[1.0], np.random.default_rng(7).uniform(0.92, 1.08, len(frames) - 1)])
    depths = [(d * np.float32(e)).astype(np.float32) for (_, d), e in zip(frames, errors, strict=True)]
    given = list(depths)
    camera = Camera(fx=cam.fx, fy=cam.fy, cx=cam.cx, cy=cam.cy, width=cam.width, height=cam.height)
    spec = ReconstructionJobSpec.model_validate({"input": "s3://walks/room.mp4", "output": {"uri": "s3://walks/out"},
                                                 "quality": "high", "depthMax": 8.0})
    ctx = RunContext(namespace="team-a", name="room", settings=RunnerSettings.from_env({"SPATIALFORGE_DEVICE": "cpu"}))
    warnings: list[str] = []

    result, scaled = ReconstructStage()._poses(keyframes, depths, camera, spec, ctx, warnings)

    assert warnings == [] and result.posed == list(range(len(frames)))
    pos, rot = _errors(result.poses, truth)
    assert float(np.sqrt(np.mean(pos**2))) <= 0.01 and float(pos.max()) <= 0.02, pos
    assert float(rot.max()) <= 0.1, rot
    assert all(s is d for s, d in zip(scaled, given, strict=True)), "the working-size maps were copied"
    for k, (out, (_, true)) in enumerate(zip(scaled, frames, strict=True)):
        valid = true > 0
        ratio = float(np.median(out[valid] / true[valid]))
        assert abs(ratio - 1.0) <= 0.01, f"frame {k}: scale error {errors[k]:.3f} left {ratio:.4f} after scaling"


def test_fusion_can_release_each_map_once_integrated(quarter_walk):
    """The stage hands its maps over (`release=True`): each is dropped from the list once fused,
    so the mesh extraction does not stack on them; the surface is the same."""
    truth, rgbs, depths = quarter_walk
    poses = [np.linalg.inv(truth[0]) @ T for T in truth[:6]]
    kept = fuse(rgbs[:6], list(depths[:6]), poses, CAM.K, voxel_size=0.02, depth_max=8.0)
    handed = list(depths[:6])
    released = fuse(rgbs[:6], handed, poses, CAM.K, voxel_size=0.02, depth_max=8.0, release=True)
    assert handed == [None] * 6
    assert released.n_points == kept.n_points and released.frames_fused == kept.frames_fused == 6
