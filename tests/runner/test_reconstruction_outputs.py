"""Reconstruction outputs through the stage: floor plan from the pipeline's own geometry."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from spatialforge.crds.constants import EXIT_INVALID_INPUT
from spatialforge.runner import run_local
from spatialforge.runner.app import parse_resource
from spatialforge.runner.settings import RunnerSettings
from spatialforge.runner.stages.base import RunContext
from spatialforge.runner.stages.reconstruct import ReconstructStage
from spatialforge.runner.synthetic import PinholeCamera, Room, furnished_room, orbit, render, walk, write_video

ROOM = furnished_room()
FULL = PinholeCamera(width=320, height=240, fx=250, fy=250)


def _spec(video: Path, out: Path, formats: list[str], **extra) -> object:
    return parse_resource({
        "apiVersion": "spatialforge.io/v1alpha1", "kind": "ReconstructionJob",
        "metadata": {"name": "room", "namespace": "team-a"},
        "spec": {"input": video.as_uri(), "output": {"uri": out.as_uri(), "formats": formats}, "quality": "draft",
                 "depthMax": 8.0, "voxelSize": 0.03, "intrinsics": {"fx": 250.0, "fy": 250.0}, **extra},
    }, allow_local=True).spec


def test_floorplan_from_estimated_poses(tmp_path):
    """A full loop round the furnished room, rendered depth: one room of 4.4 x 5.2 m."""
    truth = walk(40)
    video = write_video(tmp_path / "room.mp4", [render(ROOM, FULL, T, supersample=1)[0] for T in truth], fps=10)

    def depth(keyframes: list) -> tuple[list[np.ndarray], bool]:
        return [render(ROOM, FULL.scaled(*k.rgb.shape[1::-1]), truth[k.index], supersample=1)[1] for k in keyframes], True

    ctx = RunContext(namespace="team-a", name="room", settings=RunnerSettings.from_env())
    result = ReconstructStage(depth_provider=depth).run(_spec(video, tmp_path / "out", ["floorplan", "trajectory"]), ctx)
    shard = tmp_path / "out" / "team-a" / "room" / "shard-00000"
    manifest = json.loads((shard / "manifest.json").read_text())
    assert set(manifest["outputs"]) == {"floorplan", "trajectory"}
    assert not (shard / "mesh.ply").exists() and not (shard / "pointcloud.ply").exists()
    plan = manifest["floorplan"]
    assert plan["roomCount"] == 1 and manifest["outputs"]["floorplan"]["roomCount"] == 1
    assert plan["areaM2"] == pytest.approx(ROOM.floor_area, rel=0.03), plan
    assert result.summary["floorplan"]["roomCount"] == 1
    final = ctx.progress.snapshot.as_status()  # the last shard progress: the operator copies these into the status
    assert (final["stage"], final["roomCount"], final["floorAreaM2"]) == ("done", 1, plan["areaM2"])
    for ext in ("svg", "dxf", "geojson"):
        entry = manifest["outputs"]["floorplan"]["files"][ext]
        assert (shard / f"floorplan.{ext}").stat().st_size == entry["bytes"] > 0
    assert json.loads((shard / "floorplan.geojson").read_text())["type"] == "FeatureCollection"


def test_floorplan_of_a_single_view(tmp_path, model_dir, make_manifest):
    """No room in one view: with other outputs a warning, alone exit 42 with the reason."""
    frame = render(Room(), FULL, orbit(2)[1], supersample=1)[0]
    video = write_video(tmp_path / "still.mp4", [frame] * 10, fps=10)
    spec = {"input": video.as_uri(), "output": {"uri": (tmp_path / "out").as_uri(), "formats": ["mesh", "floorplan"]},
            "quality": "draft", "depthMax": 50.0, "intrinsics": {"fx": 250.0, "fy": 250.0}}
    outcome = run_local(make_manifest("ReconstructionJob", spec, name="still"), show_progress=False)
    assert outcome.exit_code == 0, outcome.reason
    manifest = json.loads((tmp_path / "out" / "team-a" / "still" / "shard-00000" / "manifest.json").read_text())
    assert manifest["singleView"] and set(manifest["outputs"]) == {"mesh"}
    assert any(w.startswith("no floor plan:") for w in manifest["warnings"])
    spec["output"]["formats"] = ["floorplan"]
    outcome = run_local(make_manifest("ReconstructionJob", spec, name="still2"), show_progress=False)
    assert outcome.exit_code == EXIT_INVALID_INPUT and "FloorPlanError" in outcome.reason
