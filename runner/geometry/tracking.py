"""Keyframe poses: sparse PnP seeds, dense photometric odometry refines, a pose graph closes loops.

1. Each keyframe is seeded against the last posed one by ORB + PnP on the reference depth
   (poses.py), which converges from any motion the features can match.
2. Its depth map is scaled to agree with the already-posed keyframes (`align_scale`):
   monocular depth carries a per-frame scale error of several percent, which would
   otherwise become translation error.
3. Dense RGB-D odometry (open3d, photometric loss over every pixel with depth) refines
   the seed against the reference and against up to `skip_edges` earlier keyframes.
4. Keyframes whose estimated cameras come back near an earlier one (same place, similar
   view) are matched again (PnP, then dense odometry): these are loop closures.
5. open3d's pose graph optimisation (Levenberg-Marquardt with line processes that prune
   wrong loop edges) spreads the accumulated drift over the whole path.
6. A photometric bundle adjustment (bundle.py) refines every pose together with a smooth
   correction of every depth map, against its neighbours and its loop partners: a monocular
   network's low-frequency warp, which steps 2-5 take as given and turn into pose error, is
   estimated and removed. Each map's correction is split into a scale (in `scales`) and a
   zero-mean warp (in `fields`), and the scale consensus (below) runs after it.

Every step is guarded: a keyframe that cannot be posed is left None, nothing raises.
A pose needs evidence: dense odometry started from a guess (the last motion, when the
features gave no seed) converges on a flat or featureless frame as readily as on a real
one, so such a pose is kept only when enough feature matches agree with it (`support`);
otherwise the keyframe is "failed", never a guess with 0 inliers.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass

import numpy as np

from spatialforge.runner.geometry import odometry
from spatialforge.runner.geometry.bundle import BundleOptions, adjust, field_image, split_scale
from spatialforge.runner.geometry.poses import (
    MIN_INLIERS,
    Features,
    PoseResult,
    _gray,
    detect,
    lift,
    match,
    relative_pose,
    spread_ok,
)

log = logging.getLogger(__name__)
FRAME_CACHE = 8
SUPPORT_PX = 3.0  # reprojection error within which a feature match supports a dense-only pose
MAX_BUNDLE_LOG = 0.3  # a bundle correction beyond ±35 % of a depth map is a failure, not a fix


@dataclass(frozen=True, kw_only=True)
class TrackingOptions:
    """Knobs of the pose pipeline (defaults tuned on the synthetic furnished room)."""

    depth_max: float = 10.0
    device: str = "CPU:0"
    align_scale: bool = True
    skip_edges: int = 1
    loop_min_gap: int = 8
    loop_radius: float = 1.0
    loop_angle_deg: float = 45.0
    loop_candidates: int = 1
    loop_stride: int = 3
    bundle: bool = True
    max_seed_disagreement: tuple[float, float] = (0.05, 3.0)  # metres, degrees


def _angle_deg(R: np.ndarray) -> float:
    return float(np.degrees(np.arccos(np.clip((np.trace(R) - 1.0) / 2.0, -1.0, 1.0))))


def _disagree(a: np.ndarray, b: np.ndarray, limits: tuple[float, float]) -> bool:
    d = np.linalg.inv(a) @ b
    return float(np.linalg.norm(d[:3, 3])) > limits[0] or _angle_deg(d[:3, :3]) > limits[1]


def depth_ratio(
    depth_ref: np.ndarray, depth_cur: np.ndarray, T_cur_ref: np.ndarray, K: np.ndarray, depth_max: float, step: int = 4
) -> tuple[float, int]:
    """Median of (reference depth moved into the current camera) / (current depth), and the count.

    The factor that brings the current depth map to the reference's scale. Pixels on a grid of
    `step`; disagreements beyond 30 % (occlusions) are ignored.
    """
    import cv2

    h, w = depth_ref.shape
    vs, us = np.mgrid[0:h:step, 0:w:step]
    z = depth_ref[vs, us]
    ok = (z > 1e-6) & (z < depth_max) & np.isfinite(z)
    if ok.sum() < 50:
        return 1.0, 0
    x = (us[ok] - K[0, 2]) / K[0, 0] * z[ok]
    y = (vs[ok] - K[1, 2]) / K[1, 1] * z[ok]
    p = T_cur_ref[:3, :3] @ np.stack([x, y, z[ok]]) + T_cur_ref[:3, 3:4]
    zc = p[2]
    front = zc > 1e-3
    u = K[0, 0] * p[0, front] / zc[front] + K[0, 2]
    v = K[1, 1] * p[1, front] / zc[front] + K[1, 2]
    d = cv2.remap(depth_cur.astype(np.float32), u.astype(np.float32).reshape(1, -1), v.astype(np.float32).reshape(1, -1),
                  cv2.INTER_LINEAR, borderMode=cv2.BORDER_CONSTANT, borderValue=0).reshape(-1)
    valid = (d > 1e-6) & np.isfinite(d)
    ratio = zc[front][valid] / d[valid]
    ratio = ratio[(ratio > 0.7) & (ratio < 1.4)]
    if len(ratio) < 50:
        return 1.0, 0
    return float(np.median(ratio)), int(len(ratio))


class Tracker:
    """Poses a list of keyframes (RGB uint8, depth in metres); see the module docstring."""

    def __init__(self, images: Sequence[np.ndarray], depths: Iterable[np.ndarray], K: np.ndarray,
                 options: TrackingOptions) -> None:
        self.depths = [_finite32(d) for d in depths]
        if len(images) != len(self.depths):
            raise ValueError("one depth map per image")
        self.images = images
        self.K = np.asarray(K, dtype=np.float64)
        self.opt = options
        self.n = len(images)
        self.grays = [_gray(img) for img in images]
        self._features: dict[int, Features] = {}
        self._frames: dict[int, odometry.Frame] = {}
        self.result = PoseResult(
            poses=[None] * self.n, methods=["failed"] * self.n, inliers=[0] * self.n, scales=[1.0] * self.n,
            fields=[None] * self.n,
        )
        # (source, target, source_to_target, information, uncertain)
        self.edges: list[tuple[int, int, np.ndarray, np.ndarray, bool]] = []

    # --- caches ---------------------------------------------------------------------------

    def features(self, i: int) -> Features:
        """Every keyframe's features stay: loop closure matches against any earlier one."""
        if i not in self._features:
            self._features[i] = detect(self.grays[i])
        return self._features[i]

    def frame(self, i: int) -> odometry.Frame:
        """RGB-D frame for odometry; only the last few are kept (3 MB each at 512 px)."""
        if i not in self._frames:
            self._frames[i] = odometry.make_frame(self.images[i], self.depths[i], self.opt.device)
            while len(self._frames) > FRAME_CACHE:
                self._frames.pop(next(iter(self._frames)))
        return self._frames[i]

    # --- steps ----------------------------------------------------------------------------

    def seed(self, ref: int, cur: int) -> tuple[np.ndarray | None, str, int]:
        """T_cur_ref from features and the reference depth."""
        return relative_pose(
            self.grays[ref], self.depths[ref], self.grays[cur], self.K, depth_max=self.opt.depth_max,
            features=self.features(ref), features_cur=self.features(cur),
        )

    def scale_to(self, cur: int, refs: list[int], T_cur_ref: dict[int, np.ndarray]) -> None:
        """Scale depth `cur` to agree with the posed `refs` (weighted by overlap)."""
        ratios, weights = [], []
        for r in refs:
            ratio, count = depth_ratio(self.depths[r], self.depths[cur], T_cur_ref[r], self.K, self.opt.depth_max)
            if count:
                ratios.append(ratio)
                weights.append(count)
        if not ratios:
            return
        s = float(np.average(ratios, weights=weights))
        if abs(s - 1.0) < 1e-4:
            return
        self.depths[cur] = self.depths[cur] * np.float32(s)
        self.result.scales[cur] *= s
        self._frames.pop(cur, None)

    def support(self, ref: int, cur: int, T_cur_ref: np.ndarray) -> int:
        """Feature matches ref -> cur that T_cur_ref explains: the reference's keypoints, lifted
        with its depth, land within SUPPORT_PX of their match. 0 unless they also span an area."""
        xy_r, des_r = self.features(ref)
        xy_c, des_c = self.features(cur)
        pairs = match(des_r, des_c)
        if len(pairs) < MIN_INLIERS:
            return 0
        pts_r, pts_c = xy_r[[i for i, _ in pairs]], xy_c[[j for _, j in pairs]]
        xyz, ok = lift(pts_r, self.depths[ref], self.K, self.opt.depth_max)
        p = T_cur_ref[:3, :3] @ xyz[ok].T + T_cur_ref[:3, 3:4]
        front = p[2] > 1e-6
        uv = (self.K @ p[:, front]).T
        uv = uv[:, :2] / uv[:, 2:3]
        good = np.linalg.norm(uv - pts_c[ok][front], axis=1) < SUPPORT_PX
        return int(good.sum()) if spread_ok(pts_c[ok][front][good]) else 0

    def dense(self, source: int, target: int, init: np.ndarray) -> odometry.Alignment | None:
        return odometry.align(self.frame(source), self.frame(target), self.K, init, depth_max=self.opt.depth_max)

    def track(self) -> None:
        res = self.result
        if self.n == 0:
            return
        res.poses[0], res.methods[0] = np.eye(4), "first"
        posed = [0]
        velocity = np.eye(4)
        for cur in range(1, self.n):
            ref = posed[-1]
            T_cur_ref, method, n = self.seed(ref, cur)
            res.inliers[cur] = n
            init = np.linalg.inv(T_cur_ref) if T_cur_ref is not None else velocity  # source cur -> target ref
            if self.opt.align_scale and T_cur_ref is not None:
                earlier = posed[-1 - self.opt.skip_edges :]
                rel = {r: np.linalg.inv(res.poses[ref] @ init) @ res.poses[r] for r in earlier}
                self.scale_to(cur, earlier, rel)
            a = self.dense(cur, ref, init)
            if a is None and T_cur_ref is None:
                continue  # neither sparse nor dense could place it: unposed
            if T_cur_ref is None and a is not None:  # dense from a guess: kept only if features agree
                res.inliers[cur] = self.support(ref, cur, np.linalg.inv(a.transform))
                if res.inliers[cur] < MIN_INLIERS:
                    log.debug("keyframe %d: dense pose without feature support, unposed", cur)
                    continue
            if a is not None and T_cur_ref is not None and _disagree(a.transform, init, self.opt.max_seed_disagreement):
                log.debug("keyframe %d: dense odometry disagrees with PnP, keeping PnP", cur)
                a = None
            if a is not None:
                T, info, res.methods[cur] = a.transform, a.information, "dense"
            else:
                T, info, res.methods[cur] = init, np.eye(6) * 10.0, method if T_cur_ref is not None else "failed"
                if T_cur_ref is None:
                    continue
            res.poses[cur] = res.poses[ref] @ T
            velocity = T
            self.edges.append((cur, ref, T, info, False))
            for k in posed[-1 - self.opt.skip_edges : -1]:
                guess = np.linalg.inv(res.poses[k]) @ res.poses[cur]
                b = self.dense(cur, k, guess)
                if b is not None and not _disagree(b.transform, guess, self.opt.max_seed_disagreement):
                    self.edges.append((cur, k, b.transform, b.information, True))
            posed.append(cur)
        self._close_loops(posed)
        self._optimise(posed)
        if self.opt.bundle:
            self._bundle(posed)
        if self.opt.align_scale:
            self._consensus_scale(posed)

    def _consensus_scale(self, posed: list[int]) -> None:
        """Rescale the whole reconstruction to the mean scale of all depth maps.

        Alignment puts every depth map at the first one's scale, whose own error (several
        percent for a monocular model) would otherwise scale everything. The per-frame errors
        average out: the mean of 1/scale over the keyframes estimates the first map's error.
        """
        res = self.result
        if len(posed) < 3:
            return
        h = float(np.mean([1.0 / res.scales[k] for k in posed]))
        if not np.isfinite(h) or h <= 0 or abs(h - 1.0) < 1e-4:
            return
        for k in posed:
            res.poses[k] = res.poses[k].copy()
            res.poses[k][:3, 3] *= h
        for k in range(self.n):
            self.depths[k] = self.depths[k] * np.float32(h)
            res.scales[k] *= h

    def _bundle(self, posed: list[int]) -> None:
        """Photometric bundle adjustment; kept only when it took a step and stayed sane."""
        res = self.result
        if len(posed) < 3:
            return
        loops = [(s, t) for s, t, *_ in self.edges if abs(s - t) > BundleOptions().window]
        try:
            b = adjust(self.images, self.depths, self.K, res.poses, extra_edges=loops,
                       options=BundleOptions(depth_max=self.opt.depth_max))
        except (ValueError, np.linalg.LinAlgError) as exc:
            log.warning("bundle adjustment failed (%s); keeping the pose graph's poses", exc)
            return
        if b.iterations == 0:
            return
        for k in posed:
            # The field as applied (control values near the corners can be large yet weigh little).
            largest = float(np.abs(np.log(field_image(b.fields[k], 65, 49))).max())
            if not (np.isfinite(largest) and largest < MAX_BUNDLE_LOG):
                log.warning("bundle adjustment moved keyframe %d's depth by more than it can; keeping the pose graph's poses", k)
                return
        h, w = self.depths[posed[0]].shape
        for k in posed:
            scale, res.fields[k] = split_scale(b.fields[k])
            res.poses[k] = b.poses[k]
            res.scales[k] *= scale
            self.depths[k] = self.depths[k] * field_image(b.fields[k], w, h)
            self._frames.pop(k, None)
        res.bundle_iterations = b.iterations

    def _close_loops(self, posed: list[int]) -> None:
        res = self.result
        cos_max = np.cos(np.radians(self.opt.loop_angle_deg))
        for jj, j in enumerate(posed):
            if jj % self.opt.loop_stride:
                continue
            Pj = res.poses[j]
            cands = []
            for i in posed[:jj]:
                if j - i < self.opt.loop_min_gap:
                    continue
                Pi = res.poses[i]
                dist = float(np.linalg.norm(Pi[:3, 3] - Pj[:3, 3]))
                if dist < self.opt.loop_radius and float(Pi[:3, 2] @ Pj[:3, 2]) > cos_max:
                    cands.append((i, dist))
            # The oldest nearby view first: the longer the way round, the more drift it undoes.
            for i, _ in cands[: self.opt.loop_candidates]:
                T_j_i, _, _ = self.seed(i, j)
                if T_j_i is None:
                    continue
                init = np.linalg.inv(T_j_i)  # source j -> target i
                a = self.dense(j, i, init)
                if a is None or _disagree(a.transform, init, self.opt.max_seed_disagreement):
                    continue
                self.edges.append((j, i, a.transform, a.information, True))
                res.loops += 1

    def _optimise(self, posed: list[int]) -> None:
        import open3d as o3d

        reg = o3d.pipelines.registration
        res = self.result
        res.edges = len(self.edges)
        if not any(e[4] for e in self.edges):
            return  # a chain without extra edges: nothing to optimise
        node = {k: n for n, k in enumerate(posed)}
        graph = reg.PoseGraph()
        for k in posed:
            graph.nodes.append(reg.PoseGraphNode(res.poses[k]))
        for src, tgt, T, info, uncertain in self.edges:
            graph.edges.append(reg.PoseGraphEdge(node[src], node[tgt], T, info, uncertain=uncertain))
        option = reg.GlobalOptimizationOption(
            max_correspondence_distance=0.03, edge_prune_threshold=0.25, preference_loop_closure=1.0, reference_node=0
        )
        try:
            with o3d.utility.VerbosityContextManager(o3d.utility.VerbosityLevel.Error):
                reg.global_optimization(
                    graph, reg.GlobalOptimizationLevenbergMarquardt(), reg.GlobalOptimizationConvergenceCriteria(), option
                )
        except RuntimeError:
            log.warning("pose graph optimisation failed; keeping the odometry chain")
            return
        first_inv = np.linalg.inv(np.asarray(graph.nodes[0].pose))
        for k, n in node.items():
            pose = first_inv @ np.asarray(graph.nodes[n].pose)
            if np.all(np.isfinite(pose)):
                res.poses[k] = pose


def _finite32(depth: np.ndarray) -> np.ndarray:
    """The map as float32 with non-finite depths set to 0; the input itself when it already is
    (the tracker never writes into a map, it replaces it), so a caller handing maps over by an
    iterator keeps one copy of each, not two."""
    if depth.dtype == np.float32 and np.isfinite(depth).all():
        return depth
    return np.nan_to_num(depth.astype(np.float32), nan=0.0, posinf=0.0, neginf=0.0)


def estimate_poses(
    images: Sequence[np.ndarray],
    depths: Iterable[np.ndarray],
    K: np.ndarray,
    *,
    depth_max: float = 10.0,
    align_scale: bool = True,
    bundle: bool = True,
    device: str = "CPU:0",
    progress: Callable[[int], None] | None = None,
) -> tuple[PoseResult, list[np.ndarray]]:
    """Camera-to-world poses (first keyframe = world) and the depth maps as scaled for them.

    `images` is read by index, as often as odometry needs a frame: a sequence that builds each
    image on access (resized on the fly, say) keeps them out of memory. `depths` is read once.
    """
    tracker = Tracker(images, depths, K, TrackingOptions(depth_max=depth_max, align_scale=align_scale, bundle=bundle, device=device))
    tracker.track()
    return tracker.result, tracker.depths
