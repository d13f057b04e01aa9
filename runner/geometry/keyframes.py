"""Streaming keyframe selection: the sharpest good frame of each window, if the camera moved.

Frames arrive one at a time (a 60 s video does not fit in memory at full size). Candidates
are every `stride`-th frame; the quality gate (quality.py) drops corrupt, dark, textureless
and blurred ones, each recorded with its reason. Each window of `window` candidates yields at
most one keyframe: its sharpest good candidate whose appearance differs enough from the
previous keyframe (mean absolute difference of small blurred thumbnails); the others that
do not differ are recorded as duplicates. The number of keyframes is at most
ceil(candidates / window) <= max_keyframes.
"""

from __future__ import annotations

import math
from collections import Counter
from dataclasses import dataclass, field

import numpy as np

from spatialforge.runner.geometry.quality import DropReason, QualityGate, measure

MAX_LISTED_DROPS = 2000  # dropped frames listed one by one in the manifest (all are counted)


@dataclass(kw_only=True)
class Keyframe:
    """A chosen frame (RGB, working resolution) and where it came from."""

    index: int
    timestamp: float
    rgb: np.ndarray
    sharpness: float
    motion: float


def sharpness(gray: np.ndarray) -> float:
    import cv2

    return float(cv2.Laplacian(gray, cv2.CV_32F).var())


@dataclass(kw_only=True)
class Drops:
    """Frames left out before pose estimation, and why."""

    listed: list[dict] = field(default_factory=list)
    counts: Counter = field(default_factory=Counter)

    def add(self, index: int, reason: DropReason, **detail: float) -> None:
        self.counts[reason] += 1
        if len(self.listed) < MAX_LISTED_DROPS:
            self.listed.append({"frame": index, "reason": reason.value, **{k: round(v, 4) for k, v in detail.items()}})


class KeyframeSelector:
    """Feed frames with `offer`; `finish` returns the keyframes in order."""

    def __init__(self, *, max_keyframes: int, total_frames: int, window: int = 3, min_motion: float = 0.004) -> None:
        self.max_keyframes = max(1, max_keyframes)
        # Short inputs: fewer candidates per window, so every moving frame can be a keyframe.
        self.window = max(1, min(window, math.ceil(max(total_frames, 1) / self.max_keyframes)))
        candidates = self.max_keyframes * self.window
        self.stride = max(1, math.ceil(max(total_frames, 1) / candidates))
        self.min_motion = min_motion
        self.keyframes: list[Keyframe] = []
        self.drops = Drops()
        self.candidates = 0
        self.gate = QualityGate()
        self.max_motion = 0.0  # largest thumbnail difference from the first good frame
        self._first_thumb: np.ndarray | None = None
        self._best: Keyframe | None = None
        self._best_thumb: np.ndarray | None = None
        self._in_window = 0
        self._last_thumb: np.ndarray | None = None

    def wants(self, index: int) -> bool:
        """Whether frame `index` is a candidate (others need not be decoded at all)."""
        return index % self.stride == 0

    def offer(self, index: int, timestamp: float, rgb: np.ndarray | None) -> None:
        self.candidates += 1
        if rgb is None or rgb.size == 0:
            self.drops.add(index, DropReason.corrupt)
        else:
            self._judge(index, timestamp, rgb)
        self._in_window += 1
        if self._in_window >= self.window:
            self._close_window()

    def _judge(self, index: int, timestamp: float, rgb: np.ndarray) -> None:
        _, stats = measure(rgb)
        reason = self.gate.judge(stats)
        if reason is not None:
            detail = {DropReason.dark: {"brightness": stats.brightness}, DropReason.textureless: {"texture": stats.texture},
                      DropReason.blurred: {"sharpness": stats.sharpness}}.get(reason, {})
            self.drops.add(index, reason, **detail)
            return
        if self._first_thumb is None:
            self._first_thumb = stats.thumb
        self.max_motion = max(self.max_motion, float(np.mean(np.abs(stats.thumb - self._first_thumb))))
        motion = 1.0 if self._last_thumb is None else float(np.mean(np.abs(stats.thumb - self._last_thumb)))
        if motion < self.min_motion:
            self.drops.add(index, DropReason.duplicate, motion=motion)
            return
        if self._best is None or stats.sharpness > self._best.sharpness:
            self._best = Keyframe(index=index, timestamp=timestamp, rgb=rgb, sharpness=stats.sharpness, motion=motion)
            self._best_thumb = stats.thumb

    def _close_window(self) -> None:
        if self._best is not None and len(self.keyframes) < self.max_keyframes:
            self.keyframes.append(self._best)
            self._last_thumb = self._best_thumb
        self._best, self._best_thumb, self._in_window = None, None, 0

    def finish(self) -> list[Keyframe]:
        self._close_window()
        return self.keyframes
