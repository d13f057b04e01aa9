"""A point cloud and a mesh from one depth map: the result when only one view is usable.

Every pixel with depth becomes a point; neighbouring pixels become two triangles unless
their depths differ by more than `max_jump` (relative), which would bridge an occlusion.
"""

from __future__ import annotations

import numpy as np

from spatialforge.runner.errors import EmptyReconstructionError
from spatialforge.runner.geometry.fusion import FusionResult


def single_view(
    rgb: np.ndarray, depth: np.ndarray, K: np.ndarray, *, depth_max: float, step: int = 2, max_jump: float = 0.05
) -> FusionResult:
    """Geometry of one RGB-D frame in its own camera frame (the world frame), every `step` px."""
    import open3d as o3d
    import open3d.core as o3c

    d = np.nan_to_num(depth.astype(np.float32), nan=0.0, posinf=0.0, neginf=0.0)[::step, ::step]
    colors = rgb[::step, ::step].astype(np.float32) / 255.0
    h, w = d.shape
    vs, us = np.mgrid[0:h, 0:w].astype(np.float64) * step
    valid = (d > 1e-6) & (d < depth_max)
    if not valid.any():
        raise EmptyReconstructionError(f"the only usable keyframe has no depth between 0 and depthMax={depth_max} m")
    xyz = np.stack([(us - K[0, 2]) / K[0, 0] * d, (vs - K[1, 2]) / K[1, 1] * d, d], axis=-1)
    index = np.full((h, w), -1, np.int64)
    index[valid] = np.arange(int(valid.sum()))
    a, b, c, e = index[:-1, :-1], index[:-1, 1:], index[1:, :-1], index[1:, 1:]
    da, db, dc, de = d[:-1, :-1], d[:-1, 1:], d[1:, :-1], d[1:, 1:]
    quad = np.stack([da, db, dc, de])
    smooth = (quad.max(axis=0) - quad.min(axis=0)) < max_jump * np.maximum(quad.min(axis=0), 1e-6)
    ok = (a >= 0) & (b >= 0) & (c >= 0) & (e >= 0) & smooth
    tris = np.concatenate([np.stack([a[ok], c[ok], b[ok]], 1), np.stack([b[ok], c[ok], e[ok]], 1)])
    points = xyz[valid].astype(np.float32)
    cols = colors[valid].astype(np.float32)
    pcd = o3d.t.geometry.PointCloud(o3c.Tensor(points))
    pcd.point.colors = o3c.Tensor(cols)
    mesh = o3d.t.geometry.TriangleMesh()
    mesh.vertex.positions = o3c.Tensor(points)
    mesh.vertex.colors = o3c.Tensor(cols)
    mesh.triangle.indices = o3c.Tensor(tris.astype(np.int32))
    return FusionResult(point_cloud=pcd, mesh=mesh, frames_fused=1)
