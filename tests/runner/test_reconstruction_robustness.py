"""Held-out robustness suite: footage that goes wrong in the ways phone videos do.

Every video is made here (rendered room, then damaged); the real stage runs on it with the
tiny depth model. None may exit 1 or print a traceback: either a result (exit 0, possibly a
single view) or exit 42 with a reason a user can act on.
"""

from __future__ import annotations

import json
from pathlib import Path

import cv2
import numpy as np
import pytest

from spatialforge.crds.constants import EXIT_INVALID_INPUT
from spatialforge.runner import run_local
from spatialforge.runner.synthetic import PinholeCamera, Room, look_pose, orbit, render, write_video

ROOM = Room()
CAM = PinholeCamera(width=320, height=240, fx=250, fy=250)


@pytest.fixture(scope="module")
def walk_frames() -> list[np.ndarray]:
    return [render(ROOM, CAM, T, supersample=1)[0] for T in orbit(30, step=0.015, yaw_step=0.6)]


def _motion_blur(rgb: np.ndarray, length: int = 21) -> np.ndarray:
    return cv2.filter2D(rgb, -1, np.ones((1, length), np.float32) / length)


def _defocus(rgb: np.ndarray) -> np.ndarray:
    return cv2.GaussianBlur(rgb, (0, 0), 4.0)


def _damage(path: Path, start: float = 0.4, end: float = 0.6) -> Path:
    data = bytearray(path.read_bytes())
    a, b = int(len(data) * start), int(len(data) * end)
    data[a:b] = np.random.default_rng(3).integers(0, 256, b - a, dtype=np.uint8).tobytes()
    path.write_bytes(bytes(data))
    return path


def _run(tmp_path: Path, make_manifest, video: Path, capfd, **spec_extra):
    spec = {"input": video.as_uri(), "output": {"uri": (tmp_path / "out").as_uri()}, "quality": "draft",
            "depthMax": 50.0, "voxelSize": 0.2, "intrinsics": {"fx": 250.0, "fy": 250.0}, **spec_extra}
    outcome = run_local(make_manifest("ReconstructionJob", spec, name="clip"), show_progress=False)
    captured = capfd.readouterr()
    assert "Traceback" not in captured.out + captured.err, captured.err[-3000:]
    assert outcome.exit_code != 1, outcome.reason
    manifest_path = tmp_path / "out" / "team-a" / "clip" / "shard-00000" / "manifest.json"
    manifest = json.loads(manifest_path.read_text()) if outcome.exit_code == 0 else None
    return outcome, manifest


def _dropped(manifest: dict, reason: str) -> set[int]:
    return {d["frame"] for d in manifest["frames"]["droppedFrames"] if d["reason"] == reason}


def test_blur_bursts_are_dropped_and_listed(tmp_path, walk_frames, model_dir, make_manifest, capfd):
    burst = {8, 9, 10, 19, 20}
    frames = [_motion_blur(f) if i in burst else f for i, f in enumerate(walk_frames)]
    outcome, manifest = _run(tmp_path, make_manifest, write_video(tmp_path / "v.mp4", frames, fps=10), capfd)
    assert outcome.exit_code == 0, outcome.reason
    assert _dropped(manifest, "blurred") == burst
    assert not manifest["singleView"] and manifest["keyframes"] >= 10


def test_defocus_at_the_end(tmp_path, walk_frames, model_dir, make_manifest, capfd):
    frames = walk_frames[:18] + [_defocus(f) for f in walk_frames[18:]]
    outcome, manifest = _run(tmp_path, make_manifest, write_video(tmp_path / "v.mp4", frames, fps=10), capfd)
    assert outcome.exit_code == 0, outcome.reason
    assert _dropped(manifest, "blurred") == set(range(18, 30))


def test_black_frames_are_dropped(tmp_path, walk_frames, model_dir, make_manifest, capfd):
    black = {0, 1, 12, 13, 14, 29}
    frames = [np.zeros_like(f) if i in black else f for i, f in enumerate(walk_frames)]
    outcome, manifest = _run(tmp_path, make_manifest, write_video(tmp_path / "v.mp4", frames, fps=10), capfd)
    assert outcome.exit_code == 0, outcome.reason
    assert _dropped(manifest, "dark") == black


def test_all_black_video_says_it_is_too_dark(tmp_path, walk_frames, model_dir, make_manifest, capfd):
    frames = [np.zeros_like(f) for f in walk_frames[:12]]
    outcome, _ = _run(tmp_path, make_manifest, write_video(tmp_path / "v.mp4", frames, fps=10), capfd)
    assert outcome.exit_code == EXIT_INVALID_INPUT
    assert "no usable frame" in outcome.reason and "100 % too dark" in outcome.reason and "more light" in outcome.reason


def test_blank_video_says_there_is_no_texture(tmp_path, walk_frames, model_dir, make_manifest, capfd):
    frames = [np.full_like(f, 128) for f in walk_frames[:12]]
    outcome, _ = _run(tmp_path, make_manifest, write_video(tmp_path / "v.mp4", frames, fps=10), capfd)
    assert outcome.exit_code == EXIT_INVALID_INPUT
    assert "no texture in 100 % of frames" in outcome.reason


def test_blurred_throughout_fails_with_the_reason(tmp_path, walk_frames, model_dir, make_manifest, capfd):
    frames = [_defocus(_defocus(f)) for f in walk_frames[:12]]
    outcome, _ = _run(tmp_path, make_manifest, write_video(tmp_path / "v.mp4", frames, fps=10), capfd)
    assert outcome.exit_code == EXIT_INVALID_INPUT
    assert "blurred" in outcome.reason or "texture" in outcome.reason, outcome.reason


def test_frozen_camera_gives_a_single_view(tmp_path, walk_frames, model_dir, make_manifest, capfd):
    frames = [walk_frames[5]] * 30
    outcome, manifest = _run(tmp_path, make_manifest, write_video(tmp_path / "v.mp4", frames, fps=10), capfd)
    assert outcome.exit_code == 0, outcome.reason
    assert manifest["singleView"] is True and manifest["keyframes"] == 1
    assert manifest["frames"]["dropped"]["duplicate"] == 29
    assert any("the camera did not move" in w and "move around the object" in w for w in manifest["warnings"])
    assert manifest["outputs"]["mesh"]["triangles"] > 0 and manifest["outputs"]["pointcloud"]["points"] > 0


@pytest.mark.parametrize("container", [("mp4", "mp4v"), ("avi", "MJPG")])
def test_damaged_container_stretch(tmp_path, walk_frames, model_dir, make_manifest, capfd, container):
    ext, fourcc = container
    video = _damage(write_video(tmp_path / f"v.{ext}", walk_frames, fps=10, fourcc=fourcc))
    outcome, manifest = _run(tmp_path, make_manifest, video, capfd)
    assert outcome.exit_code == 0, outcome.reason
    assert manifest["frames"]["dropped"].get("corrupt", 0) >= 1
    assert manifest["keyframes"] >= 5


@pytest.mark.parametrize("count", [1, 2])
def test_one_and_two_frames(tmp_path, walk_frames, model_dir, make_manifest, capfd, count):
    frames = [walk_frames[0], walk_frames[6]][:count]
    outcome, manifest = _run(tmp_path, make_manifest, write_video(tmp_path / "v.mp4", frames, fps=10), capfd)
    assert outcome.exit_code == 0, outcome.reason
    assert manifest["keyframes"] == count
    if count == 1:
        assert manifest["singleView"] is True


def test_very_fast_pan(tmp_path, model_dir, make_manifest, capfd):
    frames = [render(ROOM, CAM, look_pose((0.0, 0.0, 0.5), yaw_deg=25.0 * i), supersample=1)[0] for i in range(14)]
    outcome, manifest = _run(tmp_path, make_manifest, write_video(tmp_path / "v.mp4", frames, fps=10), capfd)
    assert outcome.exit_code == 0, outcome.reason
    assert manifest["keyframes"] >= 2


def test_trajectory_only_runs_no_fusion(tmp_path, walk_frames, model_dir, make_manifest, capfd):
    video = write_video(tmp_path / "v.mp4", walk_frames[:12], fps=10)
    outcome, manifest = _run(tmp_path, make_manifest, video, capfd, output={"uri": (tmp_path / "out").as_uri(),
                                                                           "formats": ["trajectory"]})
    assert outcome.exit_code == 0, outcome.reason
    assert set(manifest["outputs"]) == {"trajectory"} and "fusion" not in manifest["timings"]
    traj = json.loads((tmp_path / "out" / "team-a" / "clip" / "shard-00000" / "trajectory.json").read_text())
    assert traj["intrinsics"]["fx"] > 0 and traj["frames"][0]["cameraToWorld"] == np.eye(4).tolist()
    assert manifest["model"]["checkpoint"] == "depth-anything-v2-small-metric-indoor" and manifest["model"]["metric"]
