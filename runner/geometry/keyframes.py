"""Streaming keyframe selection: the sharpest frame of each window, if the camera moved.

Frames arrive one at a time (a 60 s video does not fit in memory at full size). Candidates
are every `stride`-th frame; each window of `window` candidates yields at most one keyframe:
its sharpest candidate (variance of the Laplacian) whose appearance differs enough from the
previous keyframe (mean absolute difference of small blurred thumbnails). The number of
keyframes is therefore at most ceil(candidates / window) <= max_keyframes.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np


@dataclass(kw_only=True)
class Keyframe:
    """A chosen frame (RGB, working resolution) and where it came from."""

    index: int
    timestamp: float
    rgb: np.ndarray
    sharpness: float
    motion: float


def _thumb(gray: np.ndarray) -> np.ndarray:
    import cv2

    small = cv2.resize(gray, (64, 48), interpolation=cv2.INTER_AREA)
    return cv2.GaussianBlur(small, (5, 5), 0).astype(np.float32) / 255.0


def sharpness(gray: np.ndarray) -> float:
    import cv2

    return float(cv2.Laplacian(gray, cv2.CV_32F).var())


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
        self._best: Keyframe | None = None
        self._best_thumb: np.ndarray | None = None
        self._in_window = 0
        self._last_thumb: np.ndarray | None = None

    def wants(self, index: int) -> bool:
        """Whether frame `index` is a candidate (others need not be decoded at all)."""
        return index % self.stride == 0

    def offer(self, index: int, timestamp: float, rgb: np.ndarray) -> None:
        import cv2

        gray = cv2.cvtColor(rgb, cv2.COLOR_RGB2GRAY)
        thumb = _thumb(gray)
        motion = 1.0 if self._last_thumb is None else float(np.mean(np.abs(thumb - self._last_thumb)))
        if motion >= self.min_motion:
            sharp = sharpness(gray)
            if self._best is None or sharp > self._best.sharpness:
                self._best = Keyframe(index=index, timestamp=timestamp, rgb=rgb, sharpness=sharp, motion=motion)
                self._best_thumb = thumb
        self._in_window += 1
        if self._in_window >= self.window:
            self._close_window()

    def _close_window(self) -> None:
        if self._best is not None and len(self.keyframes) < self.max_keyframes:
            self.keyframes.append(self._best)
            self._last_thumb = self._best_thumb
        self._best, self._best_thumb, self._in_window = None, None, 0

    def finish(self) -> list[Keyframe]:
        self._close_window()
        return self.keyframes
