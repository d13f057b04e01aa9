"""Frames between keyframes vote on a monocular reconstruction's global scale (geometry/scale_frames.py)."""

from __future__ import annotations

import json

import numpy as np
import pytest

from spatialforge.runner.app import parse_resource
from spatialforge.runner.geometry.scale_frames import ScaleVotes, choose_frames
from spatialforge.runner.settings import RunnerSettings
from spatialforge.runner.stages.base import RunContext
from spatialforge.runner.errors import InvalidSpecError
from spatialforge.runner.stages.reconstruct import ReconstructStage, scale_frame_budget
from spatialforge.runner.synthetic import PinholeCamera, furnished_room, render, render_path, walk, write_video

ROOM = furnished_room()
CAM = PinholeCamera(width=320, height=240, fx=250, fy=250)


def test_frames_are_spread_between_the_keyframes_and_never_one_of_them():
    keyframes = [10, 13, 16, 40]
    chosen = choose_frames(keyframes, total_frames=100, budget=10)
    assert len(chosen) == 10
    assert not chosen & set(keyframes)
    assert min(chosen) > 10 and max(chosen) < 40
    gaps = np.diff(sorted(chosen))
    assert gaps.max() <= 4, sorted(chosen)  # 27 frames between, 10 asked: every 3rd
    assert choose_frames(keyframes, total_frames=100, budget=1000) == set(range(11, 40)) - set(keyframes)
    assert choose_frames(keyframes, total_frames=100, budget=0) == set()
    assert choose_frames([5], total_frames=100, budget=10) == set()


def _spec(**extra) -> object:
    return parse_resource({
        "apiVersion": "spatialforge.io/v1alpha1", "kind": "ReconstructionJob",
        "metadata": {"name": "room", "namespace": "team-a"},
        "spec": {"input": "s3://videos/walk.mp4", "output": {"uri": "s3://results/"}, **extra},
    }).spec


def test_a_spec_may_ask_fewer_voting_frames_than_its_preset_never_more():
    assert scale_frame_budget(_spec(quality="draft")) == 100
    assert scale_frame_budget(_spec(quality="standard")) == 500
    assert scale_frame_budget(_spec(quality="high", scaleFrames=40)) == 40
    assert scale_frame_budget(_spec(quality="draft", scaleFrames=1000)) == 100  # the draft preset's quota bounds it
    assert scale_frame_budget(_spec(scaleFrames=0)) == 0
    with pytest.raises(InvalidSpecError, match="scaleFrames"):
        _spec(scaleFrames=5000)


def _votes() -> ScaleVotes:
    return ScaleVotes(indices=[0, 1], images=[], depths=[], poses=[np.eye(4), np.eye(4)], K=CAM.K, depth_max=8.0)


def test_a_wrongly_placed_frame_does_not_vote_and_a_wild_correction_is_refused():
    votes = _votes()
    votes.votes = [1.01, 0.99, 1.00, 1.02, 0.98, 1.6]  # the last: a frame placed wrongly
    g = votes.correction([1.0] * 6)
    assert len(votes.votes) == 5 and g == pytest.approx(1.0, abs=1e-9)
    votes.votes = [1.2, 1.21, 1.19, 1.2]
    assert votes.correction([1.0]) is None  # 20 %: the votes disagree with tracking, not refine it
    votes.votes = [1.0, 1.0]
    assert votes.correction([1.0]) == 1.0  # too few to say anything


@pytest.fixture(scope="module")
def short_walk() -> tuple[list[np.ndarray], list[np.ndarray], list[np.ndarray]]:
    """75 frames over the first quarter of the walk: every 3rd a keyframe, the others vote."""
    truth = walk(75, fraction=0.25)
    return truth, *render_path(ROOM, CAM, truth)


def test_votes_measure_each_frame_s_network_scale_against_the_reconstruction(short_walk):
    """A reconstruction 3 % too large; the network's depth for each voting frame off by its own
    drawn scale: each vote is that frame's scale over the reconstruction's, and the correction
    brings the reconstruction to the mean of every frame's."""
    truth, rgbs, depths = short_walk
    rng = np.random.default_rng(7)
    drawn = 1.0 + rng.normal(0.0, 0.04, size=len(truth))
    recon = 1.03
    keys = list(range(0, 75, 3))
    first = np.linalg.inv(truth[0])
    poses = []
    for i in keys:
        T = first @ truth[i]
        T[:3, 3] *= recon
        poses.append(T)
    votes = ScaleVotes(indices=keys, images=[rgbs[i] for i in keys], depths=[depths[i] * np.float32(recon) for i in keys],
                       poses=poses, K=CAM.K, depth_max=8.0)
    others = [i for i in range(75) if i not in keys and keys[0] < i < keys[-1]]
    first_half, second_half = others[: len(others) // 2], others[len(others) // 2 :]
    got = [votes.add(i, rgbs[i], depths[i] * np.float32(drawn[i])) for i in first_half]
    for start in range(0, len(second_half), 8):  # as the stage hands them: 8 at a time, on threads
        chunk = second_half[start : start + 8]
        got += votes.add_many([(i, rgbs[i], depths[i] * np.float32(drawn[i])) for i in chunk], workers=4)
    for i, vote in zip(others, got, strict=True):
        assert vote is not None, i
        assert vote == pytest.approx(drawn[i] / recon, rel=0.005), i
    assert votes.tried == len(votes.votes) == len(others)
    keyframe_votes = [drawn[i] / recon for i in keys]
    g = votes.correction(keyframe_votes)
    want = float(np.mean([drawn[i] for i in keys + others])) / recon
    assert g == pytest.approx(want, rel=0.001)


def _run(tmp_path, truth, video, scale_frames: int | None = None, fail_votes: bool = False) -> tuple[dict, float]:
    """The stage on a walk whose keyframes' depth is 6 % too deep and the other frames' 3 % too
    shallow; the reconstruction's scale against the truth (similarity of the camera paths)."""
    calls = []

    def depth(frames: list) -> tuple[list[np.ndarray], bool]:
        calls.append(len(frames))
        if len(calls) > 1 and fail_votes:
            raise RuntimeError("the depth network went away")
        factor = np.float32(1.06 if len(calls) == 1 else 0.97)  # the first call is the keyframes'
        return [render(ROOM, CAM.scaled(*f.rgb.shape[1::-1]), truth[f.index], supersample=1)[1] * factor for f in frames], True

    out = tmp_path / f"out-{scale_frames}-{fail_votes}"
    spec = parse_resource({
        "apiVersion": "spatialforge.io/v1alpha1", "kind": "ReconstructionJob",
        "metadata": {"name": "room", "namespace": "team-a"},
        "spec": {"input": video.as_uri(), "output": {"uri": out.as_uri(), "formats": ["trajectory"]}, "quality": "draft",
                 "depthMax": 8.0, "intrinsics": {"fx": 250.0, "fy": 250.0}, "scaleFrames": scale_frames},
    }, allow_local=True).spec
    ctx = RunContext(namespace="team-a", name="room", settings=RunnerSettings.from_env())
    ReconstructStage(depth_provider=depth).run(spec, ctx)
    shard = out / "team-a" / "room" / "shard-00000"
    manifest = json.loads((shard / "manifest.json").read_text())
    frames = [f for f in json.loads((shard / "trajectory.json").read_text())["frames"] if f["cameraToWorld"]]
    first = np.linalg.inv(truth[frames[0]["frame"]])
    est = np.asarray([np.asarray(f["cameraToWorld"])[:3, 3] for f in frames])
    gt = np.asarray([(first @ truth[f["frame"]])[:3, 3] for f in frames])
    scale = float(np.linalg.norm(est - est.mean(0)) / np.linalg.norm(gt - gt.mean(0)))
    return manifest, scale


def test_the_stage_rescales_the_reconstruction_to_every_frame_s_mean(tmp_path):
    truth = walk(60, fraction=0.25)
    video = write_video(tmp_path / "walk.mp4", [render(ROOM, CAM, T, supersample=1)[0] for T in truth], fps=10)

    manifest, alone = _run(tmp_path, truth, video, scale_frames=0)  # spec.scaleFrames 0: the keyframes alone
    assert manifest["scaleVotes"] is None
    assert alone == pytest.approx(1.06, rel=0.003)  # the keyframes' mean

    manifest, voted = _run(tmp_path, truth, video)  # the draft preset's 100: every frame between votes
    v = manifest["scaleVotes"]
    assert v["keyframes"] == manifest["posed"] and v["votes"] >= 0.9 * v["frames"] > 0, v
    want = (v["keyframes"] * 1.06 + v["votes"] * 0.97) / (v["keyframes"] + v["votes"])
    assert voted == pytest.approx(want, rel=0.003), (voted, want, v)
    assert v["correction"] == pytest.approx(want / 1.06, rel=0.003)

    manifest, kept = _run(tmp_path, truth, video, fail_votes=True)
    assert manifest["scaleVotes"] is None and kept == pytest.approx(alone, rel=0.002)  # open3d threads: not bit-equal
    assert any("could not vote on the scale" in w for w in manifest["warnings"]), manifest["warnings"]
