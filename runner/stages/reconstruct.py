"""ReconstructionJob: frames -> quality gate -> keyframes -> depth -> poses -> fusion -> outputs.

Before fusion, depth is median-filtered and depth smeared across occluding edges ("flying
pixels") is dropped (geometry/depth_filters.py); the manifest's `flyingPixelsDropped` says
what share.

Outputs under shard-00000, as `spec.output.formats` asks: `trajectory.json` (metric camera
poses with intrinsics), `pointcloud.ply`, `mesh.ply` with its web-sized copy `mesh.web.ply`
(geometry/webmesh.py), `floorplan.{svg,dxf,geojson}`; then `manifest.json`. A trajectory-only
job stops after the pose stage (no fusion).

Footage never crashes the stage: unusable frames are dropped before pose estimation and
listed in the manifest with the reason; a video with one usable view (one frame, a frozen
camera) gives a single-view result marked `singleView`; only a video without any usable
frame fails (exit 42) with a reason that says what was wrong and what to do.
"""

from __future__ import annotations

import json
import logging
import os
import tempfile
import time
from collections.abc import Callable, Iterable, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from spatialforge.crds.v1alpha1.reconstructionjob import QualityPreset, ReconstructionFormat, ReconstructionJobSpec
from spatialforge.runner.errors import EmptyReconstructionError, FloorPlanError, InputNotFoundError, InvalidVideoError
from spatialforge.runner.geometry.camera import Camera, resolve_camera
from spatialforge.runner.geometry.bundle import field_image
from spatialforge.runner.geometry.depth_filters import prepare_for_fusion
from spatialforge.runner.geometry.fusion import FusionResult, fuse
from spatialforge.runner.geometry.keyframes import Drops, Keyframe, KeyframeSelector
from spatialforge.runner.geometry.poses import PoseResult
from spatialforge.runner.geometry.quality import ADVICE, DropReason, QualityGate, measure
from spatialforge.runner.geometry.scale_frames import MAX_CORRECTION as MAX_SCALE_CORRECTION
from spatialforge.runner.geometry.scale_frames import ScaleVotes, choose_frames
from spatialforge.runner.geometry.single_view import single_view
from spatialforge.runner.geometry.tracking import estimate_poses
from spatialforge.runner.geometry.webmesh import write_web_mesh
from spatialforge.crds.v1alpha1.depthbatch import is_image_name
from spatialforge.runner.memory import release_free_memory
from spatialforge.runner.stages.base import RunContext, StageResult, manifest_header
from spatialforge.runner.storage import join_uri
from spatialforge.runner.storage.local import file_path
from spatialforge.runner.video import VIDEO_EXTENSIONS, ImageSequenceSource, VideoSource

log = logging.getLogger(__name__)

# Working resolution (longer side) and voxel size (metres) per preset.
MAX_SIDE = {QualityPreset.draft: 384, QualityPreset.standard: 512, QualityPreset.high: 768}
VOXEL_SIZE = {QualityPreset.draft: 0.04, QualityPreset.standard: 0.02, QualityPreset.high: 0.01}
# The TSDF's truncation band, at least this many metres whatever the voxel. A network's depth
# is off by a few %; the bundle adjustment (geometry/bundle.py) takes out most of that, and on
# the bench's monocular walk the high preset's 4 cm band is then as accurate as an 8 cm one
# (mesh p95 after a similarity 5.0 against 4.9 mm) for 290 MB less with rendered depth.
MIN_TRUNCATION_M = 0.04
TRUNCATION_VOXELS = 4.0
# Dense odometry works at most at this size (longer side): finer costs time, not accuracy.
POSE_MAX_SIDE = 512
FLOORPLAN_SLICE_HEIGHT = 1.0
# With a metric network, frames between the keyframes vote on the global scale (at most this
# many; `spec.scaleFrames` may ask fewer, so a preset's quota units bound the work;
# geometry/scale_frames.py): each costs a depth inference and a PnP, and takes the
# scale's error from σ/√keyframes towards σ/√(keyframes + frames).
SCALE_FRAMES = {QualityPreset.draft: 100, QualityPreset.standard: 500, QualityPreset.high: 1000}
SCALE_BATCH = 8
VOTE_WORKERS = min(SCALE_BATCH, len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1)
# Below this, a camera is taken not to have moved (metres, degrees).
STILL_BASELINE, STILL_ROTATION = 0.01, 2.0

_DROP_WORDS = {
    DropReason.corrupt: "could not be decoded",
    DropReason.dark: "too dark",
    DropReason.textureless: "without texture",
    DropReason.blurred: "blurred",
    DropReason.duplicate: "unchanged",
}


def scale_frame_budget(spec: ReconstructionJobSpec) -> int:
    """How many frames between the keyframes vote on the scale: the preset's SCALE_FRAMES, or
    fewer where `spec.scaleFrames` asks (never more: the preset's quota units bound the work)."""
    most = SCALE_FRAMES[QualityPreset(spec.quality)]
    return most if spec.scale_frames is None else min(spec.scale_frames, most)


def disparity_to_depth(disp: np.ndarray) -> np.ndarray:
    """Relative models predict disparity: invert it and normalise the median depth to 1."""
    valid = disp > 1e-6
    depth = np.zeros_like(disp, dtype=np.float32)
    depth[valid] = 1.0 / disp[valid]
    if valid.any():
        depth /= float(np.median(depth[valid]))
    return depth


def no_usable_frame_reason(drops: Drops, candidates: int) -> str:
    """Why nothing could be reconstructed, by share of the sampled frames, with advice."""
    if candidates == 0:
        return "the video has no frames"
    parts = [f"{100 * n / candidates:.0f} % {_DROP_WORDS[r]}" for r, n in drops.counts.most_common()]
    main = drops.counts.most_common(1)[0][0] if drops.counts else DropReason.corrupt
    if main == DropReason.textureless:
        head = f"no texture in {100 * drops.counts[main] / candidates:.0f} % of frames"
    else:
        head = "no usable frame"
    return f"{head} ({', '.join(parts)} of {candidates} sampled frames); {ADVICE[main]}"


class _Resized(Sequence[np.ndarray]):
    """Images resized (INTER_AREA) each time they are read: the tracker reads each a few times."""

    def __init__(self, images: list[np.ndarray], width: int, height: int) -> None:
        self.images, self.size = images, (width, height)

    def __len__(self) -> int:
        return len(self.images)

    def __getitem__(self, i: int) -> np.ndarray:  # type: ignore[override]  # read by index only
        import cv2

        return cv2.resize(self.images[i], self.size, interpolation=cv2.INTER_AREA)


def _scale(depth: np.ndarray, s: float, field: np.ndarray | None = None) -> np.ndarray:
    """`depth * s` times the bundle adjustment's smooth correction (`field`, any size: it is a
    spline over the image), in place where the map is a writable float array."""
    if s == 1.0 and field is None:
        return depth
    factor = np.float32(s) if field is None else field_image(field, depth.shape[1], depth.shape[0]) * np.float32(s)
    if depth.dtype.kind == "f" and depth.flags.writeable:
        depth *= factor
        return depth
    return depth * factor


def _warp(field: np.ndarray | None) -> float | None:
    """The largest smooth correction the bundle adjustment made to a map beyond its scale, as a
    fraction (0.03: 3 %); None where it did not run."""
    return None if field is None else round(float(np.expm1(np.abs(field).max())), 5)


def _resize_depth(depth: np.ndarray, width: int, height: int) -> np.ndarray:
    """Depth at another size, sampled at pixel centres like INTER_AREA samples the images.

    Bilinear where the surface is smooth, the nearest pixel across depth edges (no flying
    points). Plain INTER_NEAREST shifts depth against colour by up to half a pixel, which
    cost 14 mm of drift on the high preset's walk.
    """
    import cv2

    near = cv2.resize(depth, (width, height), interpolation=cv2.INTER_NEAREST_EXACT)
    linear = cv2.resize(depth, (width, height), interpolation=cv2.INTER_LINEAR)
    return np.where(np.abs(linear - near) <= 0.02 * np.abs(near), linear, near).astype(np.float32)


class _Mapped(Sequence[np.ndarray]):
    """`fn` of each item, computed each time it is read."""

    def __init__(self, items: Sequence[np.ndarray], fn: Callable[[np.ndarray], np.ndarray]) -> None:
        self.items, self.fn = items, fn

    def __len__(self) -> int:
        return len(self.items)

    def __getitem__(self, i: int) -> np.ndarray:  # type: ignore[override]  # read by index only
        return self.fn(self.items[i])


DepthProvider = Callable[[list[Keyframe]], tuple[list[np.ndarray], bool]]


class ReconstructStage:
    """Runs a ReconstructionJob (always one shard).

    `depth_provider` replaces the depth network (frames -> (depth maps in metres, metric)),
    for benchmarks and experiments on scenes whose true depth is known. `scale_frames`
    overrides `spec.scaleFrames` and the preset's SCALE_FRAMES (0: the keyframes alone set the
    scale).
    """

    kind = "ReconstructionJob"

    def __init__(self, *, depth_provider: DepthProvider | None = None, scale_frames: int | None = None) -> None:
        self.depth_provider = depth_provider
        self.scale_frames = scale_frames

    def run(self, spec: ReconstructionJobSpec, ctx: RunContext) -> StageResult:
        started = time.monotonic()
        timings: dict[str, float] = {}
        progress = ctx.progress
        preset = QualityPreset(spec.quality)
        formats = set(spec.output.formats)
        warnings: list[str] = []
        with tempfile.TemporaryDirectory(prefix="sf-recon-") as tmp:
            progress.update(stage="decode")
            source = self._open_source(spec.input, ctx, Path(tmp), MAX_SIDE[preset])
            selector = KeyframeSelector(max_keyframes=preset.max_keyframes, total_frames=source.frame_count or 1)
            keyframes, t_decode, t_select = self._select(source, selector)
            timings["decode"], timings["keyframes"] = t_decode, t_select
            warnings.extend(source.warnings)  # frames lost to damage; what image decoding guessed
            if not keyframes:
                raise EmptyReconstructionError(f"{spec.input}: {no_usable_frame_reason(selector.drops, selector.candidates)}")
            h, w = keyframes[0].rgb.shape[:2]
            camera = resolve_camera(w, h, spec=None, metadata_focal_px=source.metadata_focal_px)
            if spec.intrinsics is not None:  # spec intrinsics are for the full-size input
                full = self._full_size(source, w, h)
                camera = resolve_camera(full[0], full[1], spec=spec.intrinsics).scaled(w, h)
            progress.update(done=0, total=len(keyframes), stage="depth")
            t0 = time.monotonic()
            depths, metric, checkpoint = self._depth(spec, ctx, keyframes)
            timings["depth"] = time.monotonic() - t0
            release_free_memory()
            progress.update(stage="poses")
            t0 = time.monotonic()
            poses, depths = self._poses(keyframes, depths, camera, spec, ctx, warnings)
            timings["poses"] = time.monotonic() - t0
            release_free_memory()  # the tracker's maps and features, before fusion allocates its own
            single = len(poses.posed) < 2
            scale_votes = None
            budget = scale_frame_budget(spec) if self.scale_frames is None else self.scale_frames
            if metric and len(poses.posed) >= 3 and budget > 0:
                progress.update(stage="scale")
                t0 = time.monotonic()
                scale_votes = self._vote_on_scale(spec, ctx, source, keyframes, poses, depths, camera, budget, warnings)
                timings["scale"] = time.monotonic() - t0
                release_free_memory()  # its frames and features, before fusion
            if single:
                warnings.append(self._single_view_why(keyframes, selector))
            else:
                self._check_motion(poses, keyframes, warnings)
            geometry: FusionResult | None = None
            plan = None
            flying = 0.0
            voxel = spec.voxel_size or VOXEL_SIZE[preset]
            device = ctx.get_device().open3d_device
            if formats & {ReconstructionFormat.pointcloud, ReconstructionFormat.mesh, ReconstructionFormat.floorplan}:
                progress.update(stage="fusion")
                t0 = time.monotonic()
                # After tracking, which needs the edges and did worse on filtered depth (geometry/depth_filters.py).
                depths = list(depths)
                flying = prepare_for_fusion(depths)
                if single:
                    k = poses.posed[0] if poses.posed else 0
                    geometry = single_view(keyframes[k].rgb, depths[k], camera.K, depth_max=spec.depth_max)
                else:
                    geometry = fuse(
                        [k.rgb for k in keyframes], depths, poses.poses, camera.K,
                        voxel_size=voxel, depth_max=spec.depth_max, device=device,
                        trunc_voxels=max(TRUNCATION_VOXELS, MIN_TRUNCATION_M / voxel), release=True,
                    )
                timings["fusion"] = time.monotonic() - t0
                if ReconstructionFormat.floorplan in formats:
                    progress.update(stage="floorplan")
                    t0 = time.monotonic()
                    try:
                        plan = self._floorplan(geometry)
                    except FloorPlanError as exc:
                        if formats == {ReconstructionFormat.floorplan}:
                            raise
                        # The other outputs are still worth having: say why there is no plan.
                        warnings.append(f"no floor plan: {exc}")
                    timings["floorplan"] = time.monotonic() - t0
            progress.update(stage="write")
            t0 = time.monotonic()
            manifest_uri = self._write(
                spec, ctx, Path(tmp), keyframes, poses, geometry, plan, camera,
                extra={
                    "voxelSize": voxel, "metric": metric, "device": device, "quality": preset.value,
                    "flyingPixelsDropped": round(flying, 4), "scaleVotes": scale_votes,
                    "singleView": single, "warnings": warnings,
                    "model": {"size": spec.model.size.value, "variant": spec.model.variant.value,
                              "checkpoint": checkpoint, "metric": metric},
                    "frames": {"total": source.frame_count, "sampled": selector.candidates, "lost": source.lost,
                               "dropped": {r.value: n for r, n in selector.drops.counts.items()},
                               "droppedFrames": selector.drops.listed},
                },
                timings=timings, started=started,
            )
            timings["write"] = time.monotonic() - t0
        seconds = time.monotonic() - started
        progress.update(done=len(keyframes), total=len(keyframes), stage="done",
                        floor_area_m2=plan.area_m2 if plan is not None else None,
                        room_count=plan.room_count if plan is not None else None)
        summary: dict[str, Any] = {
            "keyframes": len(keyframes), "posed": len(poses.posed), "singleView": single,
            "points": geometry.n_points if geometry is not None else 0, "timings": timings,
        }
        if plan is not None:
            summary["floorplan"] = {"areaM2": round(plan.area_m2, 3), "roomCount": plan.room_count}
        return StageResult(manifest_uri=manifest_uri, items=len(keyframes), seconds=seconds, summary=summary)

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

    def _depth(self, spec: ReconstructionJobSpec, ctx: RunContext, keyframes: list[Keyframe], *,
               report: bool = True) -> tuple[list[np.ndarray], bool, str]:
        if self.depth_provider is not None:
            depths, metric = self.depth_provider(keyframes)
            if report:
                ctx.progress.update(done=len(depths))
            return depths, metric, "provided"
        estimator = ctx.estimator(spec.model)
        batch = 4 if ctx.get_device().is_cuda else 1
        depths: list[np.ndarray] = []
        for i in range(0, len(keyframes), batch):
            chunk = keyframes[i : i + batch]
            depths.extend(estimator.predict_rgb([k.rgb for k in chunk]))
            if report:
                ctx.progress.update(done=len(depths))
        if not estimator.metric:
            depths = [disparity_to_depth(d) for d in depths]
        checkpoint = getattr(getattr(estimator, "checkpoint", None), "name", f"{spec.model.size.value}-{spec.model.variant.value}")
        return depths, bool(estimator.metric), str(checkpoint)

    def _poses(
        self, keyframes: list[Keyframe], depths: list[np.ndarray], camera: Camera, spec: ReconstructionJobSpec,
        ctx: RunContext, warnings: list[str],
    ) -> tuple[PoseResult, list[np.ndarray]]:
        """Tracking at most POSE_MAX_SIDE wide; poses carry over to the working size unchanged.

        Memory (the high preset holds 200 keyframes): the small images are made on access, the
        small depth maps are handed to the tracker by a generator so only its (scaled) copy of
        each lives, and the working-size maps are scaled in place: the stage owns them.
        """
        first_only = PoseResult(poses=[np.eye(4)] + [None] * (len(keyframes) - 1),
                                methods=["first"] + ["failed"] * (len(keyframes) - 1),
                                inliers=[0] * len(keyframes), scales=[1.0] * len(keyframes))
        if len(keyframes) < 2:
            return first_only, depths
        h, w = depths[0].shape
        scale = min(1.0, POSE_MAX_SIDE / max(w, h))
        images: Sequence[np.ndarray]
        small: Iterable[np.ndarray]
        if scale < 1.0:
            sw, sh = round(w * scale), round(h * scale)
            images = _Resized([k.rgb for k in keyframes], sw, sh)
            small = (_resize_depth(d, sw, sh) for d in depths)
            K = camera.scaled(sw, sh).K
        else:
            images, small, K = [k.rgb for k in keyframes], depths, camera.K
        try:
            result = estimate_poses(images, small, K, depth_max=spec.depth_max, device=ctx.get_device().open3d_device)[0]
        except Exception as exc:  # noqa: BLE001 - a geometry failure must not fail the job: one view remains
            log.warning("pose estimation failed: %s: %s", type(exc).__name__, exc)
            log.debug("pose estimation failure", exc_info=True)
            warnings.append(f"pose estimation failed ({type(exc).__name__}); kept the first view only")
            return first_only, depths
        fields = result.fields or [None] * len(depths)
        return result, [_scale(d, s, f) for d, s, f in zip(depths, result.scales, fields, strict=True)]

    def _vote_on_scale(
        self, spec: ReconstructionJobSpec, ctx: RunContext, source: VideoSource | ImageSequenceSource,
        keyframes: list[Keyframe], poses: PoseResult, depths: list[np.ndarray], camera: Camera, budget: int,
        warnings: list[str],
    ) -> dict[str, Any] | None:
        """Frames between the keyframes vote on the global scale (geometry/scale_frames.py); the
        poses and depth maps are rescaled in place by the result. Decodes the input again, a
        batch at a time: only each frame's vote is kept. Never fails the job."""
        import cv2

        wanted = choose_frames([k.index for k in keyframes], source.frame_count or keyframes[-1].index + 1, budget)
        if not wanted:
            return None
        h, w = depths[0].shape
        shrink = min(1.0, POSE_MAX_SIDE / max(w, h))
        sw, sh = (round(w * shrink), round(h * shrink)) if shrink < 1.0 else (w, h)
        small_rgb = (lambda img: cv2.resize(img, (sw, sh), interpolation=cv2.INTER_AREA)) if shrink < 1.0 else (lambda img: img)
        small_depth = (lambda d: _resize_depth(d, sw, sh)) if shrink < 1.0 else (lambda d: d)
        votes = ScaleVotes(
            indices=[k.index for k in keyframes],
            images=_Resized([k.rgb for k in keyframes], sw, sh) if shrink < 1.0 else [k.rgb for k in keyframes],
            depths=_Mapped(depths, small_depth), poses=poses.poses, K=camera.scaled(sw, sh).K, depth_max=spec.depth_max,
        )
        gate = QualityGate()
        batch: list[Keyframe] = []

        def flush() -> None:
            maps, _, _ = self._depth(spec, ctx, batch, report=False)
            votes.add_many([(f.index, small_rgb(f.rgb), small_depth(np.asarray(d, dtype=np.float32)))
                            for f, d in zip(batch, maps, strict=True)], workers=VOTE_WORKERS)
            batch.clear()
            ctx.progress.update(done=votes.tried)

        ctx.progress.update(done=0, total=len(wanted))
        try:
            for frame in source.reopen().frames(lambda i: i in wanted):
                if frame.rgb is None or frame.rgb.shape != keyframes[0].rgb.shape:  # an image of another size
                    continue
                _, stats = measure(frame.rgb)
                if gate.judge(stats) is not None:
                    continue
                batch.append(Keyframe(index=frame.index, timestamp=frame.timestamp, rgb=frame.rgb,
                                      sharpness=stats.sharpness, motion=0.0))
                if len(batch) >= SCALE_BATCH:
                    flush()
            if batch:
                flush()
        except Exception as exc:  # noqa: BLE001 - the keyframes' own scale stands without the votes
            log.warning("scale votes failed: %s: %s", type(exc).__name__, exc)
            log.debug("scale votes failure", exc_info=True)
            warnings.append(f"the frames between keyframes could not vote on the scale ({type(exc).__name__}); "
                            "the keyframes alone set it")
            return None
        g = votes.correction([1.0 / poses.scales[k] for k in poses.posed])
        summary: dict[str, Any] = {"frames": len(wanted), "votes": len(votes.votes), "keyframes": len(poses.posed),
                                   "correction": None if g is None else round(g, 5)}
        if g is None:
            warnings.append(f"the frames between keyframes would rescale the reconstruction by more than "
                            f"{100 * MAX_SCALE_CORRECTION:.0f} %; kept the keyframes' scale")
            return summary
        if g != 1.0:
            for k in poses.posed:
                pose = np.array(poses.poses[k], dtype=np.float64)
                pose[:3, 3] *= g
                poses.poses[k] = pose
            poses.scales[:] = [s * g for s in poses.scales]
            depths[:] = [_scale(d, g) for d in depths]
        return summary

    @staticmethod
    def _single_view_why(keyframes: list[Keyframe], selector: KeyframeSelector) -> str:
        dup = selector.drops.counts.get(DropReason.duplicate, 0)
        if len(keyframes) == 1 and dup:
            return (f"the camera did not move: {dup} of {selector.candidates} sampled frames look the same as the first "
                    f"(largest change {100 * selector.max_motion:.1f} %); single-view result, move around the object for a full model")
        if len(keyframes) == 1:
            return "only one usable frame; single-view result, film a longer pass around the object for a full model"
        return (f"no keyframe could be placed relative to the first ({len(keyframes)} keyframes share too little); "
                "single-view result, move more slowly")

    @staticmethod
    def _check_motion(poses: PoseResult, keyframes: list[Keyframe], warnings: list[str]) -> None:
        posed = [poses.poses[i] for i in poses.posed]
        baseline = max(float(np.linalg.norm(p[:3, 3])) for p in posed)
        turn = max(float(np.degrees(np.arccos(np.clip((np.trace(p[:3, :3]) - 1) / 2, -1, 1)))) for p in posed)
        if baseline < STILL_BASELINE and turn < STILL_ROTATION:
            span = keyframes[-1].index - keyframes[0].index + 1
            warnings.append(f"the camera did not move: {1000 * baseline:.1f} mm over {span} frames; move around the object")

    @staticmethod
    def _floorplan(geometry: FusionResult) -> Any:
        from spatialforge.runner.geometry.floorplan import extract_floorplan

        normals = None
        if "normals" in geometry.point_cloud.point:
            normals = geometry.point_cloud.point.normals.numpy()
        return extract_floorplan(geometry.points, normals, slice_height=FLOORPLAN_SLICE_HEIGHT)

    def _write(
        self,
        spec: ReconstructionJobSpec,
        ctx: RunContext,
        tmp: Path,
        keyframes: list[Keyframe],
        poses: PoseResult,
        geometry: FusionResult | None,
        plan: Any,
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
        if geometry is not None:
            for attrs in (geometry.point_cloud.point, geometry.mesh.vertex):
                if "colors" in attrs:  # weighted averages can overshoot [0, 1] by a hair
                    attrs.colors = attrs.colors.clip(0.0, 1.0)
        if geometry is not None and ReconstructionFormat.pointcloud in formats:
            path = tmp / "pointcloud.ply"
            if not o3d.t.io.write_point_cloud(str(path), geometry.point_cloud, write_ascii=False):
                raise RuntimeError("writing the point cloud failed")
            outputs["pointcloud"] = self._put(store, join_uri(prefix, path.name), path, points=geometry.n_points)
        if geometry is not None and ReconstructionFormat.mesh in formats:
            path = tmp / "mesh.ply"
            if geometry.n_triangles == 0:
                raise EmptyReconstructionError("fusion produced points but no mesh triangles")
            if not o3d.t.io.write_triangle_mesh(str(path), geometry.mesh, write_ascii=False):
                raise RuntimeError("writing the mesh failed")
            outputs["mesh"] = self._put(store, join_uri(prefix, path.name), path, triangles=geometry.n_triangles)
            t0 = time.monotonic()
            web = write_web_mesh(geometry.mesh, tmp / "mesh.web.ply", budget=spec.output.web_mesh_triangles)
            timings["webMesh"] = time.monotonic() - t0
            outputs["webMesh"] = self._put(store, join_uri(prefix, "mesh.web.ply"), tmp / "mesh.web.ply",
                                           triangles=web.triangles, fullTriangles=web.full_triangles)
        if plan is not None:
            from spatialforge.runner.geometry.floorplan_writers import to_dxf, to_geojson, to_svg

            files = {"svg": (to_svg(plan).encode(), "image/svg+xml"), "dxf": (to_dxf(plan), "application/dxf"),
                     "geojson": (json.dumps(to_geojson(plan)).encode(), "application/geo+json")}
            entry: dict[str, Any] = {"areaM2": round(plan.area_m2, 3), "roomCount": plan.room_count, "files": {}}
            for ext, (data, content_type) in files.items():
                uri = join_uri(prefix, f"floorplan.{ext}")
                entry["files"][ext] = {"uri": uri, "sha256": store.put(uri, data, content_type=content_type), "bytes": len(data)}
            outputs["floorplan"] = entry
            extra["floorplan"] = plan.summary()
        trajectory = {
            "intrinsics": camera.as_dict(),
            "convention": "cameraToWorld, OpenCV axes (x right, y down, z forward), metres",
            "singleView": extra.get("singleView", False),
            "frames": [
                {
                    "keyframe": i,
                    "frame": k.index,
                    "timestamp": round(k.timestamp, 4),
                    "method": poses.methods[i],
                    "inliers": poses.inliers[i],
                    "depthScale": round(poses.scales[i], 5) if poses.scales else 1.0,
                    "depthWarp": _warp(poses.fields[i] if poses.fields else None),
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
            "intrinsics": camera.as_dict(),
            "keyframes": len(keyframes),
            "posed": len(poses.posed),
            "poseGraph": {"edges": poses.edges, "loopClosures": poses.loops, "bundleSteps": poses.bundle_iterations},
            "framesFused": 0 if geometry is None else geometry.frames_fused,
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
