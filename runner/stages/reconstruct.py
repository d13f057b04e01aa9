"""ReconstructionJob: frames -> keyframes -> depth -> poses -> TSDF fusion -> PLY + trajectory.

Outputs under shard-00000: `pointcloud.ply`, `mesh.ply`, `trajectory.json` (as the spec's
formats ask), then `manifest.json`. Timings per stage go into the manifest (and the bench).
"""

from __future__ import annotations

import json
import tempfile
import time
from pathlib import Path
from collections.abc import Callable
from typing import Any

import numpy as np

from spatialforge.crds.v1alpha1.reconstructionjob import QualityPreset, ReconstructionFormat, ReconstructionJobSpec
from spatialforge.runner.errors import EmptyReconstructionError, InputNotFoundError, InvalidVideoError
from spatialforge.runner.geometry.camera import Camera, resolve_camera
from spatialforge.runner.geometry.fusion import FusionResult, fuse
from spatialforge.runner.geometry.keyframes import Keyframe, KeyframeSelector
from spatialforge.runner.geometry.poses import PoseResult, estimate_poses
from spatialforge.runner.images import is_image_name
from spatialforge.runner.stages.base import RunContext, StageResult, manifest_header
from spatialforge.runner.storage import join_uri
from spatialforge.runner.storage.local import file_path
from spatialforge.runner.video import VIDEO_EXTENSIONS, ImageSequenceSource, VideoSource

# Working resolution (longer side) and voxel size (metres) per preset.
MAX_SIDE = {QualityPreset.draft: 384, QualityPreset.standard: 512, QualityPreset.high: 768}
VOXEL_SIZE = {QualityPreset.draft: 0.04, QualityPreset.standard: 0.02, QualityPreset.high: 0.01}


def disparity_to_depth(disp: np.ndarray) -> np.ndarray:
    """Relative models predict disparity: invert it and normalise the median depth to 1."""
    valid = disp > 1e-6
    depth = np.zeros_like(disp, dtype=np.float32)
    depth[valid] = 1.0 / disp[valid]
    if valid.any():
        depth /= float(np.median(depth[valid]))
    return depth


DepthProvider = Callable[[list[Keyframe]], tuple[list[np.ndarray], bool]]


class ReconstructStage:
    """Runs a ReconstructionJob (always one shard).

    `depth_provider` replaces the depth network (keyframes -> (depth maps in metres, metric)),
    for benchmarks and experiments on scenes whose true depth is known.
    """

    kind = "ReconstructionJob"

    def __init__(self, *, depth_provider: DepthProvider | None = None) -> None:
        self.depth_provider = depth_provider

    def run(self, spec: ReconstructionJobSpec, ctx: RunContext) -> StageResult:
        started = time.monotonic()
        timings: dict[str, float] = {}
        progress = ctx.progress
        preset = QualityPreset(spec.quality)
        max_side = MAX_SIDE[preset]
        with tempfile.TemporaryDirectory(prefix="sf-recon-") as tmp:
            progress.update(stage="decode")
            source = self._open_source(spec.input, ctx, Path(tmp), max_side)
            selector = KeyframeSelector(max_keyframes=preset.max_keyframes, total_frames=source.frame_count or 1)
            keyframes, t_decode, t_select = self._select(source, selector)
            timings["decode"], timings["keyframes"] = t_decode, t_select
            if not keyframes:
                raise InvalidVideoError(f"{spec.input}: no usable frames")
            h, w = keyframes[0].rgb.shape[:2]
            camera = resolve_camera(w, h, spec=None, metadata_focal_px=source.metadata_focal_px)
            if spec.intrinsics is not None:  # spec intrinsics are for the full-size input
                full = self._full_size(source, w, h)
                camera = resolve_camera(full[0], full[1], spec=spec.intrinsics).scaled(w, h)
            progress.update(done=0, total=len(keyframes), stage="depth")
            t0 = time.monotonic()
            depths, metric = self._depth(spec, ctx, keyframes)
            timings["depth"] = time.monotonic() - t0
            progress.update(stage="poses")
            t0 = time.monotonic()
            poses = estimate_poses([k.rgb for k in keyframes], depths, camera.K, depth_max=spec.depth_max)
            timings["poses"] = time.monotonic() - t0
            progress.update(stage="fusion")
            t0 = time.monotonic()
            voxel = spec.voxel_size or VOXEL_SIZE[preset]
            device = ctx.get_device().open3d_device
            fusion = fuse(
                [k.rgb for k in keyframes], depths, poses.poses, camera.K,
                voxel_size=voxel, depth_max=spec.depth_max, device=device,
            )
            timings["fusion"] = time.monotonic() - t0
            progress.update(stage="write")
            t0 = time.monotonic()
            manifest_uri = self._write(
                spec, ctx, Path(tmp), keyframes, poses, fusion, camera,
                extra={"voxelSize": voxel, "metric": metric, "device": device, "quality": preset.value},
                timings=timings, started=started,
            )
            timings["write"] = time.monotonic() - t0
        seconds = time.monotonic() - started
        progress.update(done=len(keyframes), total=len(keyframes), stage="done")
        return StageResult(
            manifest_uri=manifest_uri,
            items=len(keyframes),
            seconds=seconds,
            summary={"keyframes": len(keyframes), "posed": len(poses.posed), "points": fusion.n_points, "timings": timings},
        )

    # --- steps -------------------------------------------------------------------------------

    def _open_source(self, uri: str, ctx: RunContext, tmp: Path, max_side: int) -> VideoSource | ImageSequenceSource:
        store = ctx.store(uri)
        if uri.endswith("/"):
            frames = [o.uri for o in store.list(uri) if is_image_name(o.uri)]
            if not frames:
                raise InputNotFoundError(f"input prefix {uri} holds no image frames")
            return ImageSequenceSource(frames, store.get, max_side=max_side)
        if not uri.lower().endswith(VIDEO_EXTENSIONS):
            raise InvalidVideoError(f"{uri}: not a video ({', '.join(VIDEO_EXTENSIONS)}) nor a prefix ending in '/'")
        if store.stat(uri) is None:
            raise InputNotFoundError(f"input {uri} does not exist")
        if uri.startswith("file://"):
            path = file_path(uri)
        else:
            path = store.download(uri, tmp / ("input" + Path(uri).suffix.lower()))
        return VideoSource(path, name=uri, max_side=max_side)

    @staticmethod
    def _full_size(source: VideoSource | ImageSequenceSource, w: int, h: int) -> tuple[int, int]:
        cap = getattr(source, "full_size", None)
        return cap if cap else (w, h)

    def _select(self, source: VideoSource | ImageSequenceSource, selector: KeyframeSelector) -> tuple[list[Keyframe], float, float]:
        t_select = 0.0
        t0 = time.monotonic()
        for frame in source.frames(selector.wants):
            t1 = time.monotonic()
            selector.offer(frame.index, frame.timestamp, frame.rgb)
            t_select += time.monotonic() - t1
        keyframes = selector.finish()
        return keyframes, time.monotonic() - t0 - t_select, t_select

    def _depth(self, spec: ReconstructionJobSpec, ctx: RunContext, keyframes: list[Keyframe]) -> tuple[list[np.ndarray], bool]:
        if self.depth_provider is not None:
            depths, metric = self.depth_provider(keyframes)
            ctx.progress.update(done=len(depths))
            return depths, metric
        estimator = ctx.estimator(spec.model)
        batch = 4 if ctx.get_device().is_cuda else 1
        depths: list[np.ndarray] = []
        for i in range(0, len(keyframes), batch):
            chunk = keyframes[i : i + batch]
            depths.extend(estimator.predict_rgb([k.rgb for k in chunk]))
            ctx.progress.update(done=len(depths))
        if not estimator.metric:
            depths = [disparity_to_depth(d) for d in depths]
        return depths, bool(estimator.metric)

    def _write(
        self,
        spec: ReconstructionJobSpec,
        ctx: RunContext,
        tmp: Path,
        keyframes: list[Keyframe],
        poses: PoseResult,
        fusion: FusionResult,
        camera: Camera,
        *,
        extra: dict[str, Any],
        timings: dict[str, float],
        started: float,
    ) -> str:
        import open3d as o3d

        store = ctx.store(spec.output.uri)
        prefix = ctx.shard_prefix(spec.output.uri)
        outputs: dict[str, Any] = {}
        formats = set(spec.output.formats)
        for geometry in (fusion.point_cloud.point, fusion.mesh.vertex):
            if "colors" in geometry:  # weighted averages can overshoot [0, 1] by a hair
                geometry.colors = geometry.colors.clip(0.0, 1.0)
        if ReconstructionFormat.pointcloud in formats:
            path = tmp / "pointcloud.ply"
            if not o3d.t.io.write_point_cloud(str(path), fusion.point_cloud, write_ascii=False):
                raise RuntimeError("writing the point cloud failed")
            outputs["pointcloud"] = self._put(store, join_uri(prefix, path.name), path, points=fusion.n_points)
        if ReconstructionFormat.mesh in formats:
            path = tmp / "mesh.ply"
            if fusion.n_triangles == 0:
                raise EmptyReconstructionError("fusion produced points but no mesh triangles")
            if not o3d.t.io.write_triangle_mesh(str(path), fusion.mesh, write_ascii=False):
                raise RuntimeError("writing the mesh failed")
            outputs["mesh"] = self._put(store, join_uri(prefix, path.name), path, triangles=fusion.n_triangles)
        trajectory = {
            "intrinsics": camera.as_dict(),
            "convention": "cameraToWorld, OpenCV axes (x right, y down, z forward), metres",
            "frames": [
                {
                    "keyframe": i,
                    "frame": k.index,
                    "timestamp": round(k.timestamp, 4),
                    "method": poses.methods[i],
                    "inliers": poses.inliers[i],
                    "cameraToWorld": None if poses.poses[i] is None else np.asarray(poses.poses[i]).round(6).tolist(),
                }
                for i, k in enumerate(keyframes)
            ],
        }
        if ReconstructionFormat.trajectory in formats:
            data = json.dumps(trajectory, indent=1).encode()
            uri = join_uri(prefix, "trajectory.json")
            outputs["trajectory"] = {"uri": uri, "sha256": store.put(uri, data, content_type="application/json"), "bytes": len(data)}
        manifest = {
            **manifest_header(self.kind, ctx),
            "input": spec.input,
            "model": {"size": spec.model.size.value, "variant": spec.model.variant.value},
            "intrinsics": camera.as_dict(),
            "keyframes": len(keyframes),
            "posed": len(poses.posed),
            "framesFused": fusion.frames_fused,
            "outputs": outputs,
            "timings": {k: round(v, 3) for k, v in timings.items()},
            "seconds": round(time.monotonic() - started, 3),
            **extra,
        }
        uri = ctx.manifest_uri(spec.output.uri)
        store.put(uri, json.dumps(manifest, indent=2).encode(), content_type="application/json")
        return uri

    @staticmethod
    def _put(store: Any, uri: str, path: Path, **counts: int) -> dict[str, Any]:
        digest = store.put_file(uri, path, content_type="application/octet-stream")
        return {"uri": uri, "sha256": digest, "bytes": path.stat().st_size, **counts}
