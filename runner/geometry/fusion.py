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


def _depth_image(depth: np.ndarray, dev: Any) -> Any:
    import open3d as o3d
    import open3d.core as o3c

    d = np.ascontiguousarray(np.nan_to_num(depth.astype(np.float32), nan=0.0, posinf=0.0, neginf=0.0))
    return o3d.t.geometry.Image(o3c.Tensor(d)).to(dev)


def _blocks_needed(depths: list[np.ndarray], poses: list[np.ndarray | None], intrinsic: Any, *, voxel_size: float,
                   depth_max: float, dev: Any, trunc_voxels: float, block_resolution: int) -> tuple[int, int]:
    """How many voxel blocks the frames touch, and the most one frame touches: the union of each
    frame's block coordinates, as open3d's own integration computes them (a TSDF-only grid of a
    few blocks does the lookup)."""
    import open3d as o3d
    import open3d.core as o3c

    probe = o3d.t.geometry.VoxelBlockGrid(attr_names=("tsdf",), attr_dtypes=(o3c.float32,), attr_channels=((1),),
                                          voxel_size=float(voxel_size), block_resolution=block_resolution,
                                          block_count=1_000, device=dev)
    keys = np.zeros(0, dtype=np.int64)
    most = 0
    for depth, pose in zip(depths, poses, strict=True):
        if pose is None or depth is None or not np.any((depth > 0) & (depth < depth_max)):
            continue
        coords = probe.compute_unique_block_coordinates(
            _depth_image(depth, dev), intrinsic, o3c.Tensor(np.linalg.inv(pose).astype(np.float64)), depth_scale=1.0,
            depth_max=float(depth_max), trunc_voxel_multiplier=trunc_voxels,
        ).cpu().numpy().astype(np.int64)
        c = coords + (1 << 20)  # block indices within ±2^20 (10,000 km at 1 cm): 21 bits each
        keys = np.union1d(keys, (c[:, 0] << 42) | (c[:, 1] << 21) | c[:, 2])
        most = max(most, len(c))
    return len(keys), most


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
    # open3d's VoxelBlockGrid zero-fills its whole capacity up front (a block of 8^3 voxels
    # takes 6 KB) and doubles it, holding both copies while it rehashes, as soon as the blocks
    # it holds plus the frame's candidate blocks (new or not) exceed it: from a fixed 40,000,
    # a 1 cm room with network depth grew it by 470 MB, the job's peak. The blocks
    # the frames touch are counted first (a cheap pass), and the map made that size plus the
    # largest frame's candidates, so it never rehashes.
    k_o3d = np.asarray(K, dtype=np.float64).copy()
    # open3d truncates projected coordinates to pixel indices, while K follows OpenCV (pixel
    # centres at integer coordinates): shifting the principal point by half a pixel makes the
    # lookup round to the nearest pixel. Without it, slanted surfaces move by several mm.
    k_o3d[0, 2] += 0.5
    k_o3d[1, 2] += 0.5
    intrinsic = o3c.Tensor(k_o3d)
    needed, per_frame = _blocks_needed(depths, poses, intrinsic, voxel_size=voxel_size, depth_max=depth_max, dev=dev,
                                       trunc_voxels=trunc_voxels, block_resolution=block_resolution)
    block_count = int(max(1_000, needed + per_frame + 64))
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
    fused = 0
    if len(images) != len(depths) or len(depths) != len(poses):
        raise ValueError("one image, depth map and pose per frame")
    for i, (rgb, pose) in enumerate(zip(images, poses, strict=True)):
        depth = depths[i]
        if release:
            depths[i] = None  # type: ignore[call-overload]
        if pose is None:
            continue
        if not np.any((depth > 0) & (depth < depth_max)):
            continue
        depth_img = _depth_image(depth, dev)
        del depth
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
    # The mesh first: its extraction holds a table of 4 ints per voxel of every block (the
    # fusion's peak), which then need not stack on the point cloud.
    mesh = vbg.extract_triangle_mesh(weight_threshold=weight_threshold).cpu()
    pcd = vbg.extract_point_cloud(weight_threshold=weight_threshold).cpu()
    result = FusionResult(point_cloud=pcd, mesh=mesh, frames_fused=fused)
    if result.n_points == 0:
        raise EmptyReconstructionError("fusion produced no surface (depth maps do not agree on any surface)")
    return result
