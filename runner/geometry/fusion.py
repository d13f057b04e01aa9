"""TSDF fusion with open3d's tensor VoxelBlockGrid (CUDA when open3d has it), then extraction."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

from spatialforge.runner.errors import EmptyReconstructionError


@dataclass(kw_only=True)
class FusionResult:
    """Extracted surface: open3d tensor point cloud and triangle mesh (on the CPU)."""

    point_cloud: Any
    mesh: Any
    frames_fused: int

    @property
    def points(self) -> np.ndarray:
        return self.point_cloud.point.positions.numpy()

    @property
    def n_points(self) -> int:
        return 0 if "positions" not in self.point_cloud.point else int(self.point_cloud.point.positions.shape[0])

    @property
    def n_triangles(self) -> int:
        return 0 if "indices" not in self.mesh.triangle else int(self.mesh.triangle.indices.shape[0])


def fuse(
    images: list[np.ndarray],
    depths: list[np.ndarray],
    poses: list[np.ndarray | None],
    K: np.ndarray,
    *,
    voxel_size: float,
    depth_max: float,
    device: str = "CPU:0",
    trunc_voxels: float = 4.0,
    block_resolution: int = 8,
    weight_threshold: float = 1.0,
    release: bool = False,
) -> FusionResult:
    """Integrate RGB-D frames at camera-to-world `poses` (None skips a frame).

    Depth in metres (float32, 0 = invalid); raises EmptyReconstructionError when no surface results.
    `release`: the caller is done with the maps, each is dropped from `depths` once integrated,
    so the mesh extraction that ends fusion (its memory peak) does not stack on them.
    """
    import open3d as o3d
    import open3d.core as o3c

    dev = o3c.Device(device)
    n_pixels = sum(int(d.size) for d, p in zip(depths, poses, strict=True) if p is not None)
    if n_pixels == 0:
        raise EmptyReconstructionError("no keyframe could be posed, nothing to fuse")
    # Initial hash capacity (a block of 8^3 voxels takes 6 KB): the map rehashes to grow
    # when a scene needs more, so a modest start keeps a 1 cm room under 1 GB instead of
    # reserving 2 GB up front.
    block_count = int(min(40_000, max(2_000, n_pixels // 64)))
    vbg = o3d.t.geometry.VoxelBlockGrid(
        attr_names=("tsdf", "weight", "color"),
        # uint16 weight and colour: 12 bytes a voxel instead of 20 (same surface, colours
        # within 1/65535).
        attr_dtypes=(o3c.float32, o3c.uint16, o3c.uint16),
        attr_channels=((1), (1), (3)),
        voxel_size=float(voxel_size),
        block_resolution=block_resolution,
        block_count=block_count,
        device=dev,
    )
    # open3d truncates projected coordinates to pixel indices, while K follows OpenCV (pixel
    # centres at integer coordinates): shifting the principal point by half a pixel makes the
    # lookup round to the nearest pixel. Without it, slanted surfaces move by several mm.
    k_o3d = np.asarray(K, dtype=np.float64).copy()
    k_o3d[0, 2] += 0.5
    k_o3d[1, 2] += 0.5
    intrinsic = o3c.Tensor(k_o3d)
    fused = 0
    if len(images) != len(depths) or len(depths) != len(poses):
        raise ValueError("one image, depth map and pose per frame")
    for i, (rgb, pose) in enumerate(zip(images, poses, strict=True)):
        depth = depths[i]
        if release:
            depths[i] = None  # type: ignore[call-overload]
        if pose is None:
            continue
        d = np.ascontiguousarray(np.nan_to_num(depth.astype(np.float32), nan=0.0, posinf=0.0, neginf=0.0))
        del depth
        if not np.any((d > 0) & (d < depth_max)):
            continue
        depth_img = o3d.t.geometry.Image(o3c.Tensor(d)).to(dev)
        color_img = o3d.t.geometry.Image(o3c.Tensor(np.ascontiguousarray(rgb.astype(np.float32) / 255.0))).to(dev)
        extrinsic = o3c.Tensor(np.linalg.inv(pose).astype(np.float64))
        coords = vbg.compute_unique_block_coordinates(
            depth_img, intrinsic, extrinsic, depth_scale=1.0, depth_max=float(depth_max), trunc_voxel_multiplier=trunc_voxels
        )
        vbg.integrate(
            coords, depth_img, color_img, intrinsic, intrinsic, extrinsic,
            depth_scale=1.0, depth_max=float(depth_max), trunc_voxel_multiplier=trunc_voxels,
        )
        fused += 1
    if fused == 0:
        raise EmptyReconstructionError(f"no keyframe has depth between 0 and depthMax={depth_max} m")
    pcd = vbg.extract_point_cloud(weight_threshold=weight_threshold).cpu()
    mesh = vbg.extract_triangle_mesh(weight_threshold=weight_threshold).cpu()
    result = FusionResult(point_cloud=pcd, mesh=mesh, frames_fused=fused)
    if result.n_points == 0:
        raise EmptyReconstructionError("fusion produced no surface (depth maps do not agree on any surface)")
    return result
