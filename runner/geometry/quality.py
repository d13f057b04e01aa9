"""Frame quality gate: which decoded frames are fit for pose estimation, and why not.

A frame is dropped when it is
- `corrupt`: it could not be decoded (damaged stretch of the container);
- `dark`: mean brightness under 6 % (a covered lens, a black frame);
- `textureless`: almost no structure even at coarse scale (a blank wall, a uniform frame);
- `blurred`: its fine detail (variance of the Laplacian) is under 30 % of what the recent
  frames of this video reach (motion blur, defocus), or when re-blurring it removes little
  of its remaining variation (no-reference blur score of Crete-Roffet et al. 2007 above
  0.55: a video defocused throughout has no sharp frame to compare with);
- `duplicate`: it looks the same as the last keyframe (the camera did not move).
Thresholds are relative where scenes differ (sharpness) and absolute where they do not.
"""

from __future__ import annotations

import enum
from collections import deque
from dataclasses import dataclass, field

import numpy as np


class DropReason(str, enum.Enum):
    corrupt = "corrupt"
    dark = "dark"
    textureless = "textureless"
    blurred = "blurred"
    duplicate = "duplicate"


ADVICE = {
    DropReason.corrupt: "the video is damaged; export or upload it again",
    DropReason.dark: "film with more light",
    DropReason.textureless: "film surfaces with some detail, not a blank wall or a covered lens",
    DropReason.blurred: "move the camera more slowly and let it focus",
    DropReason.duplicate: "move around the object",
}

DARK_MEAN = 0.06
TEXTURE_STD = 0.012
BLUR_RELATIVE = 0.3
BLUR_FLOOR = 2.0
BLUR_SCORE = 0.55  # sharp renders 0.11-0.31, 1.5 px blur 0.43-0.55, 3 px defocus 0.64-0.75


@dataclass(kw_only=True)
class FrameStats:
    """Cheap measures of one frame (gray, [0, 1] scale for brightness and texture)."""

    brightness: float
    texture: float
    sharpness: float
    blur: float
    thumb: np.ndarray


def blur_score(gray: np.ndarray) -> float:
    """0 (sharp) .. 1 (flat): share of neighbour differences that survive a 9-tap re-blur."""
    import cv2

    g = gray.astype(np.float32)
    scores = []
    for axis, ksize in ((0, (1, 9)), (1, (9, 1))):  # cv2 ksize is (width, height)
        blurred = cv2.blur(g, ksize)
        d_orig = np.abs(np.diff(g, axis=axis))
        d_blur = np.abs(np.diff(blurred, axis=axis))
        total = float(d_orig.sum())
        if total <= 0:
            return 1.0
        scores.append((total - float(np.maximum(0.0, d_orig - d_blur).sum())) / total)
    return max(scores)


def measure(rgb: np.ndarray) -> tuple[np.ndarray, FrameStats]:
    """Gray image and the measures the gate needs."""
    import cv2

    gray = cv2.cvtColor(rgb, cv2.COLOR_RGB2GRAY) if rgb.ndim == 3 else rgb
    small = cv2.resize(gray, (64, 48), interpolation=cv2.INTER_AREA).astype(np.float32) / 255.0
    thumb = cv2.GaussianBlur(small, (5, 5), 0)
    # Texture: local contrast of the thumbnail (std of it minus its own blur), so a smooth
    # brightness gradient or vignetting does not count as texture.
    local = small - cv2.GaussianBlur(small, (0, 0), 3.0)
    return gray, FrameStats(
        brightness=float(gray.mean()) / 255.0,
        texture=float(local.std()),
        sharpness=float(cv2.Laplacian(gray, cv2.CV_32F).var()),
        blur=blur_score(gray),
        thumb=thumb,
    )


@dataclass(kw_only=True)
class QualityGate:
    """Judges frames in order; keeps a short memory of recent sharpness."""

    window: int = 60
    _recent: deque = field(default_factory=lambda: deque(maxlen=60))

    def judge(self, stats: FrameStats) -> DropReason | None:
        if stats.brightness < DARK_MEAN:
            return DropReason.dark
        if stats.texture < TEXTURE_STD:
            return DropReason.textureless
        self._recent.append(stats.sharpness)
        reference = float(np.percentile(self._recent, 75))
        if stats.sharpness < BLUR_FLOOR or stats.blur > BLUR_SCORE or stats.sharpness < BLUR_RELATIVE * reference:
            return DropReason.blurred
        return None
