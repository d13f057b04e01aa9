"""Colour previews of depth maps: a JPEG through a perceptual colormap (OpenCV's inferno LUT).

Near is bright: relative models predict disparity (large = near), metric ones metres (small =
near), so metric depth is inverted first. Values are stretched between the 2nd and 98th
percentiles, so a few outliers do not flatten the picture. For looking at, not for measuring.
"""

from __future__ import annotations

import numpy as np

PREVIEW_QUALITY = 85


def colorize(depth: np.ndarray, *, metric: bool) -> np.ndarray:
    """(H, W) float depth -> (H, W, 3) uint8 BGR image (OpenCV's channel order)."""
    import cv2

    values = depth.astype(np.float32, copy=False)
    finite = np.isfinite(values)
    if metric:
        values = np.where(finite & (values > 0), 1.0 / np.maximum(values, 1e-6), 0.0).astype(np.float32)
    grid = values[:: max(1, values.shape[0] // 256), :: max(1, values.shape[1] // 256)]  # percentiles of a subsample
    sample = grid[np.isfinite(grid)]
    if sample.size == 0:
        norm = np.zeros(values.shape, np.uint8)
    else:
        lo, hi = np.percentile(sample, (2, 98))
        span = float(hi - lo) or 1.0
        norm = (np.clip((np.nan_to_num(values) - lo) / span, 0, 1) * 255).astype(np.uint8)
    return cv2.applyColorMap(norm, cv2.COLORMAP_INFERNO)


def encode_preview(depth: np.ndarray, *, metric: bool, quality: int = PREVIEW_QUALITY) -> bytes:
    """The colour preview as JPEG bytes."""
    import cv2

    ok, buf = cv2.imencode(".jpg", colorize(depth, metric=metric), [cv2.IMWRITE_JPEG_QUALITY, quality])
    if not ok:
        raise RuntimeError("JPEG encoding failed")
    return buf.tobytes()
