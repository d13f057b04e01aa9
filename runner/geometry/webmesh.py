"""A web-sized copy of the reconstructed mesh, for the console's 3D viewer.

The full mesh of a minute's walk has millions of triangles; a browser opens a few hundred
thousand in well under two seconds. The copy is decimated with open3d's quadric decimation
to a triangle budget (a vertex-clustering pre-pass first on very large meshes), and written in one fixed binary layout whatever the source had, so the
viewer reads one layout only:

    binary_little_endian 1.0
    element vertex N: float x, y, z; uchar red, green, blue (only if the mesh has colours)
    element face M: list uchar uint vertex_indices

A mesh already under the budget is written as it is (same triangles, this layout), so every
reconstruction with a mesh has a web mesh to open.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np


@dataclass(frozen=True)
class WebMesh:
    """What was written: triangle counts of the copy and of the full mesh, the file's size."""

    triangles: int
    full_triangles: int
    bytes: int


# Meshes over this many times the budget are first cut by vertex clustering to about that many
# triangles: quadric decimation of a high-preset walk (2.4M triangles) took 74 s of its 244 s on
# two loaded cores; clustering takes a second or two, and its cells (about twice the mean edge)
# are finer than the web copy's triangles, which quadric decimation then places.
PREPASS_FACTOR = 3
MAX_CLUSTER_ROUNDS = 8  # each round's cells grow by the root of what is still to remove


def _cluster(mesh: Any, vertices: np.ndarray, triangles: np.ndarray, target: int) -> Any:
    """Vertex clustering to about `target` triangles (cell = median edge x sqrt(reduction))."""
    edge = float(np.median(np.linalg.norm(vertices[triangles[:, 0]] - vertices[triangles[:, 1]], axis=1)))
    voxel = max(edge, 1e-6) * float(np.sqrt(len(triangles) / target))
    coarse = mesh.simplify_vertex_clustering(voxel_size=voxel)
    coarse.remove_degenerate_triangles()
    return coarse


def decimate(vertices: np.ndarray, triangles: np.ndarray, colors: np.ndarray | None,
             budget: int) -> tuple[np.ndarray, np.ndarray, np.ndarray | None]:
    """At most `budget` triangles (quadric decimation, after a clustering pre-pass on meshes over
    PREPASS_FACTOR x budget); the arrays unchanged if under it."""
    if budget < 1:
        raise ValueError(f"triangle budget must be at least 1, got {budget}")
    if len(triangles) <= budget:
        return vertices, triangles, colors
    import open3d as o3d

    mesh = o3d.geometry.TriangleMesh(o3d.utility.Vector3dVector(np.asarray(vertices, dtype=np.float64)),
                                     o3d.utility.Vector3iVector(np.asarray(triangles, dtype=np.int32)))
    if colors is not None:
        mesh.vertex_colors = o3d.utility.Vector3dVector(np.asarray(colors, dtype=np.float64))
    if len(triangles) > PREPASS_FACTOR * budget:
        mesh = _cluster(mesh, vertices, triangles, PREPASS_FACTOR * budget)
    small = mesh.simplify_quadric_decimation(target_number_of_triangles=budget)
    # Quadric decimation can stop short of its target (a 2.3M-triangle mesh of noisy monocular
    # depth came back with 284,000 for a 200,000 budget): cluster what is left until it fits.
    for _ in range(MAX_CLUSTER_ROUNDS):
        if len(small.triangles) <= budget:
            break
        small = _cluster(small, np.asarray(small.vertices), np.asarray(small.triangles), int(budget * 0.9))
    if len(small.triangles) > budget:
        raise RuntimeError(f"could not bring the web mesh under {budget} triangles ({len(small.triangles)} left)")
    small.remove_unreferenced_vertices()
    out_colors = np.asarray(small.vertex_colors) if colors is not None and small.has_vertex_colors() else None
    return np.asarray(small.vertices), np.asarray(small.triangles), out_colors


def write_ply(path: Path, vertices: np.ndarray, triangles: np.ndarray, colors: np.ndarray | None) -> int:
    """Write the fixed binary layout above; colours are floats in [0, 1]. Returns the bytes written."""
    vertices = np.asarray(vertices)
    triangles = np.asarray(triangles)
    if vertices.ndim != 2 or vertices.shape[1] != 3 or triangles.ndim != 2 or triangles.shape[1] != 3:
        raise ValueError(f"expected (N, 3) vertices and (M, 3) triangles, got {vertices.shape} and {triangles.shape}")
    if len(triangles) and (triangles.min() < 0 or triangles.max() >= len(vertices)):
        raise ValueError("triangle indices outside the vertex list")
    fields: list[tuple[str, str]] = [("x", "<f4"), ("y", "<f4"), ("z", "<f4")]
    if colors is not None:
        fields += [("red", "u1"), ("green", "u1"), ("blue", "u1")]
    vert = np.empty(len(vertices), dtype=fields)
    for i, axis in enumerate("xyz"):
        vert[axis] = vertices[:, i]
    if colors is not None:
        rgb = np.clip(np.rint(np.asarray(colors, dtype=np.float64) * 255.0), 0, 255).astype(np.uint8)
        for i, channel in enumerate(("red", "green", "blue")):
            vert[channel] = rgb[:, i]
    face = np.empty(len(triangles), dtype=[("n", "u1"), ("i", "<u4", (3,))])
    face["n"] = 3
    face["i"] = triangles
    header = ["ply", "format binary_little_endian 1.0", "comment SpatialForge web mesh",
              f"element vertex {len(vertices)}", "property float x", "property float y", "property float z"]
    if colors is not None:
        header += ["property uchar red", "property uchar green", "property uchar blue"]
    header += [f"element face {len(triangles)}", "property list uchar uint vertex_indices", "end_header"]
    with path.open("wb") as f:
        f.write(("\n".join(header) + "\n").encode("ascii"))
        f.write(vert.tobytes())
        f.write(face.tobytes())
    return path.stat().st_size


def write_web_mesh(mesh: Any, path: Path, *, budget: int) -> WebMesh:
    """The web-sized copy of an open3d tensor mesh (positions, optional colours) at `path`."""
    vertices = mesh.vertex.positions.numpy()
    triangles = mesh.triangle.indices.numpy()
    colors = mesh.vertex.colors.numpy() if "colors" in mesh.vertex else None
    v, t, c = decimate(vertices, triangles, colors, budget)
    size = write_ply(path, v, t, c)
    return WebMesh(triangles=len(t), full_triangles=len(triangles), bytes=size)
