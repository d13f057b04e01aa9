"""The global scale of a monocular reconstruction, voted on by frames between the keyframes.

A monocular network's depth carries a scale error of several percent that differs from frame
to frame. Tracking puts every keyframe's map at one scale and then sets that scale to the
mean of the network's (tracking.py, `_consensus_scale`): the reconstruction is then as far
from metric as the keyframes' errors fail to average out, σ/√N for N keyframes (0.4 % for
σ 4 % and 100 keyframes; 9 mm at 2.3 m from the first camera).

More frames average further. A frame between two posed keyframes is placed against the
earlier one (features + PnP on that keyframe's corrected depth, so the frame lands at the
reconstruction's scale), and the median ratio of the keyframes' corrected depth, moved into
it, to the network's depth for it is what the network's scale is worth against the
reconstruction's (`tracking.depth_ratio`). The frame is then dropped: only that one number is
kept. The mean over keyframes and these frames rescales the whole reconstruction.

This gains only as far as the network's scale errors differ between frames: errors shared
by neighbouring frames (the same content seen twice) do not average out, whatever the count.
"""

from __future__ import annotations

import bisect
from concurrent.futures import ThreadPoolExecutor
from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np

from spatialforge.runner.geometry.poses import Features, _gray, detect, relative_pose
from spatialforge.runner.geometry.tracking import depth_ratio

# Features of a voting frame: its pose only has to be good enough for a depth ratio. With true
# depth on the bench's walk, 1,000 gave votes within 0.017 % (sd) of exact at 25 ms a frame on two
# cores, 3,000 within 0.011 % at 47 ms; the network's own scatter is 4 %.
VOTE_FEATURES = 1000
MAX_CORRECTION = 0.1  # the votes moving the scale by more than 10 % means a fault, not a finding
OUTLIER_MADS = 5.0  # votes further than this many (robust) deviations from the median are dropped
MIN_OUTLIER_SPREAD = 0.05  # ... but never closer than 5 % (log), the network's own spread


def choose_frames(keyframe_indices: list[int], total_frames: int, budget: int) -> set[int]:
    """At most `budget` frame indices, evenly spread between the first and last keyframe,
    none of them a keyframe."""
    if budget <= 0 or len(keyframe_indices) < 2:
        return set()
    first, last = keyframe_indices[0], min(keyframe_indices[-1], max(total_frames - 1, keyframe_indices[-1]))
    taken = set(keyframe_indices)
    span = [i for i in range(first, last + 1) if i not in taken]
    if not span:
        return set()
    if len(span) <= budget:
        return set(span)
    picks = np.linspace(0, len(span) - 1, budget).round().astype(int) if budget > 1 else [len(span) // 2]
    return {span[i] for i in picks}


@dataclass
class ScaleVotes:
    """Collects each frame's vote (the network's scale against the reconstruction's) and
    turns them, with the keyframes' own, into one correction of the reconstruction's scale.

    `images` and `depths` are the keyframes' (RGB uint8 and corrected depth, at the size `K`
    belongs to), `poses` their camera-to-world poses (None: not posed), `indices` their frame
    numbers in the video.
    """

    indices: list[int]
    images: Sequence[np.ndarray]
    depths: Sequence[np.ndarray]
    poses: list[np.ndarray | None]
    K: np.ndarray
    depth_max: float
    votes: list[float] = field(default_factory=list)
    tried: int = 0
    _cache: dict[int, tuple[np.ndarray, Features, np.ndarray]] = field(default_factory=dict)

    def _warm(self, needed: set[int]) -> None:
        """Keyframes' gray image, features and depth for `needed` (`images` and `depths` may build
        each item on access); the others are dropped: frames come in order."""
        for k in [k for k in self._cache if k not in needed]:
            del self._cache[k]
        for k in needed - self._cache.keys():
            gray = _gray(self.images[k])
            self._cache[k] = (gray, detect(gray), np.asarray(self.depths[k], dtype=np.float32))

    def neighbours(self, index: int) -> tuple[int, int] | None:
        """The posed keyframes just before and after frame `index`."""
        at = bisect.bisect_left(self.indices, index)
        before = next((k for k in range(at - 1, -1, -1) if self.poses[k] is not None), None)
        after = next((k for k in range(at, len(self.indices)) if self.poses[k] is not None), None)
        return None if before is None or after is None else (before, after)

    def add(self, index: int, rgb: np.ndarray, depth: np.ndarray) -> float | None:
        """Frame `index` (RGB and the network's depth, at the keyframes' size): its vote, the
        network's scale over the reconstruction's, or None where it could not be placed."""
        return self.add_many([(index, rgb, depth)])[0]

    def add_many(self, frames: list[tuple[int, np.ndarray, np.ndarray]], workers: int = 1) -> list[float | None]:
        """`add` for several frames, placed on `workers` threads at once (OpenCV's feature,
        matching and PnP calls release the GIL; the threads only read the keyframe cache)."""
        self._warm({k for index, _, _ in frames for k in (self.neighbours(index) or ())})
        if workers > 1 and len(frames) > 1:
            with ThreadPoolExecutor(max_workers=min(workers, len(frames))) as pool:
                out = list(pool.map(lambda f: self._vote(*f), frames))
        else:
            out = [self._vote(*f) for f in frames]
        self.tried += len(frames)
        self.votes.extend(v for v in out if v is not None)
        return out

    def _vote(self, index: int, rgb: np.ndarray, depth: np.ndarray) -> float | None:
        pair = self.neighbours(index)
        if pair is None:
            return None
        ref, nxt = pair
        gray_ref, feats_ref, depth_ref = self._cache[ref]
        gray = _gray(rgb)
        T_cur_ref, method, _ = relative_pose(gray_ref, depth_ref, gray, self.K, depth_max=self.depth_max,
                                             features=feats_ref, features_cur=detect(gray, VOTE_FEATURES))
        if T_cur_ref is None or method != "pnp":  # only PnP on the reference's depth carries its scale
            return None
        ratios, weights = [], []
        for k in dict.fromkeys((ref, nxt)):
            T = T_cur_ref @ np.linalg.inv(self.poses[ref]) @ self.poses[k]  # keyframe k's camera -> this frame's
            ratio, count = depth_ratio(self._cache[k][2], depth, T, self.K, self.depth_max)
            if count:
                ratios.append(ratio)
                weights.append(count)
        if not ratios:
            return None
        vote = 1.0 / float(np.average(ratios, weights=weights))
        return vote if np.isfinite(vote) and vote > 0 else None

    def correction(self, keyframe_votes: list[float]) -> float | None:
        """The factor that brings the reconstruction to the mean scale of every vote (the
        keyframes' are 1/depthScale): 1.0 when the frames' votes are too few to say more, None
        when the votes would move it by more than MAX_CORRECTION (something else is wrong).

        Votes far from the median (a frame placed wrongly) are dropped first.
        """
        votes = np.asarray(self.votes, dtype=np.float64)
        if len(votes) < 3:
            return 1.0
        logs = np.log(votes)
        med = float(np.median(logs))
        spread = max(OUTLIER_MADS * 1.4826 * float(np.median(np.abs(logs - med))), MIN_OUTLIER_SPREAD)
        kept = votes[np.abs(logs - med) <= spread]
        self.votes = kept.tolist()
        g = float(np.mean(np.concatenate([np.asarray(keyframe_votes, dtype=np.float64), kept])))
        if not np.isfinite(g) or abs(g - 1.0) > MAX_CORRECTION:
            return None
        return g
