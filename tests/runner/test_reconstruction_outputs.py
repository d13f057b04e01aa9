"""Reconstruction outputs through the stage: floor plan from the pipeline's own geometry, web mesh."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from spatialforge.crds.constants import EXIT_INVALID_INPUT
from spatialforge.runner import run_local
from spatialforge.runner.app import parse_resource
from spatialforge.runner.errors import InvalidSpecError
from spatialforge.runner.geometry.webmesh import PREPASS_FACTOR
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
    assert manifest["singleView"] and set(manifest["outputs"]) == {"mesh", "webMesh"}
    assert any(w.startswith("no floor plan:") for w in manifest["warnings"])
    spec["output"]["formats"] = ["floorplan"]
    outcome = run_local(make_manifest("ReconstructionJob", spec, name="still2"), show_progress=False)
    assert outcome.exit_code == EXIT_INVALID_INPUT and "FloorPlanError" in outcome.reason


def test_web_mesh_is_decimated_to_the_budget(tmp_path):
    """The furnished room's mesh, cut to a small budget: same extent and colours, readable by open3d, sizes listed."""
    import open3d as o3d

    truth = walk(40)
    video = write_video(tmp_path / "room.mp4", [render(ROOM, FULL, T, supersample=1)[0] for T in truth], fps=10)

    def depth(keyframes: list) -> tuple[list[np.ndarray], bool]:
        return [render(ROOM, FULL.scaled(*k.rgb.shape[1::-1]), truth[k.index], supersample=1)[1] for k in keyframes], True

    budget = 5_000
    ctx = RunContext(namespace="team-a", name="room", settings=RunnerSettings.from_env())
    spec = _spec(video, tmp_path / "out", ["mesh"], output={"uri": (tmp_path / "out").as_uri(), "formats": ["mesh"],
                                                            "webMeshTriangles": budget})
    ReconstructStage(depth_provider=depth).run(spec, ctx)
    shard = tmp_path / "out" / "team-a" / "room" / "shard-00000"
    manifest = json.loads((shard / "manifest.json").read_text())
    full, web = manifest["outputs"]["mesh"], manifest["outputs"]["webMesh"]
    assert web["uri"].endswith("/shard-00000/mesh.web.ply") and "webMesh" in manifest["timings"]
    assert web["fullTriangles"] == full["triangles"] > budget >= web["triangles"] > budget // 2
    assert full["triangles"] > PREPASS_FACTOR * budget  # the clustering pre-pass ran too
    assert (shard / "mesh.web.ply").stat().st_size == web["bytes"] < full["bytes"] / 4
    head = (shard / "mesh.web.ply").read_bytes()[:400].split(b"end_header")[0].decode()
    assert "binary_little_endian" in head and "property float x" in head and "property uchar red" in head
    assert "property list uchar uint vertex_indices" in head
    small = o3d.io.read_triangle_mesh(str(shard / "mesh.web.ply"))
    big = o3d.io.read_triangle_mesh(str(shard / "mesh.ply"))
    assert len(small.triangles) == web["triangles"] and small.has_vertex_colors()
    # Same extent within half a web triangle (5,000 triangles over this room are about 10 cm across;
    # the mesh's edges, where flying pixels were dropped, are ragged at 3 cm).
    box, big_box = small.get_axis_aligned_bounding_box(), big.get_axis_aligned_bounding_box()
    np.testing.assert_allclose(box.get_min_bound(), big_box.get_min_bound(), atol=0.05)
    np.testing.assert_allclose(box.get_max_bound(), big_box.get_max_bound(), atol=0.05)
    # Colours survive decimation: each kept vertex has about the colour of the full mesh around it
    # (its 8 nearest vertices: a kept vertex stands for the ones merged into it).
    tree = o3d.geometry.KDTreeFlann(big)
    near = np.asarray(big.vertex_colors)[[list(tree.search_knn_vector_3d(p, 8)[1]) for p in np.asarray(small.vertices)]]
    diff = np.abs(np.asarray(small.vertex_colors) - near.mean(1)).mean(1)
    assert np.median(diff) < 0.03, np.percentile(diff, [50, 90])


def test_web_mesh_fits_the_budget_where_quadric_decimation_stops_short(monkeypatch):
    """A mesh fused from monocular-like depth (noisy, in fragments): quadric decimation alone
    stops well over a tight budget; the clustering rounds after it bring it under."""
    from spatialforge.runner.geometry import webmesh
    from spatialforge.runner.geometry.fusion import fuse
    from spatialforge.runner.synthetic import monocular_like

    cam = FULL.scaled(256, 192)
    poses = walk(12)[:6]
    frames = [render(ROOM, cam, T, supersample=1) for T in poses]
    first = np.linalg.inv(poses[0])
    mesh = fuse([f[0] for f in frames], [monocular_like(f[1], np.random.default_rng(i)) for i, f in enumerate(frames)],
                [first @ T for T in poses], cam.K, voxel_size=0.02, depth_max=8.0).mesh
    vertices, triangles = mesh.vertex.positions.numpy(), mesh.triangle.indices.numpy()
    budget = 2_000
    with monkeypatch.context() as m:
        m.setattr(webmesh, "MAX_CLUSTER_ROUNDS", 0)
        with pytest.raises(RuntimeError, match="under 2000 triangles"):
            webmesh.decimate(vertices, triangles, None, budget)
    _, small, _ = webmesh.decimate(vertices, triangles, None, budget)
    assert budget // 2 < len(small) <= budget


def test_web_mesh_under_the_budget_is_the_whole_mesh(tmp_path):
    """A mesh with fewer triangles than the budget is written whole, in the web layout."""
    import open3d as o3d

    from spatialforge.runner.geometry.webmesh import write_web_mesh

    sphere = o3d.t.geometry.TriangleMesh.from_legacy(o3d.geometry.TriangleMesh.create_sphere(radius=0.5, resolution=20))
    web = write_web_mesh(sphere, tmp_path / "web.ply", budget=100_000)
    n = int(sphere.triangle.indices.shape[0])
    assert web.triangles == web.full_triangles == n and web.bytes == (tmp_path / "web.ply").stat().st_size
    back = o3d.io.read_triangle_mesh(str(tmp_path / "web.ply"))
    assert not back.has_vertex_colors()
    np.testing.assert_array_equal(np.asarray(back.triangles), sphere.triangle.indices.numpy())
    np.testing.assert_allclose(np.asarray(back.vertices), sphere.vertex.positions.numpy(), atol=1e-6)


def test_web_mesh_budget_is_checked():
    """A budget below 1000 triangles is refused by the schema, naming the field."""
    with pytest.raises(InvalidSpecError, match="webMeshTriangles: Input should be greater than or equal to 1000"):
        _spec(Path("/tmp/v.mp4"), Path("/tmp/out"), ["mesh"],
              output={"uri": Path("/tmp/out").as_uri(), "formats": ["mesh"], "webMeshTriangles": 10})
