"""Synthetic scenes with known geometry, for accuracy tests, benchmarks and demos.

A camera moves inside a box-shaped room whose walls carry a random cell texture; ray casting
in numpy gives exact RGB, depth and poses. No network, no files.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import numpy as np


@dataclass(frozen=True, kw_only=True)
class Room:
    """An axis-aligned box, seen from inside; walls textured with cells of `cell` metres."""

    lo: tuple[float, float, float] = (-1.6, -1.0, -1.0)
    hi: tuple[float, float, float] = (1.6, 1.0, 2.6)
    cell: float = 0.05
    seed: int = 7

    def distance(self, points: np.ndarray) -> np.ndarray:
        """Distance from each point (N, 3) to the nearest wall plane."""
        lo, hi = np.asarray(self.lo), np.asarray(self.hi)
        return np.minimum(np.abs(points - lo), np.abs(points - hi)).min(axis=1)


@dataclass(frozen=True, kw_only=True)
class PinholeCamera:
    width: int = 640
    height: int = 480
    fx: float = 500.0
    fy: float = 500.0
    cx: float = field(default=-1.0)
    cy: float = field(default=-1.0)

    @property
    def K(self) -> np.ndarray:  # noqa: N802
        cx = self.width / 2 if self.cx < 0 else self.cx
        cy = self.height / 2 if self.cy < 0 else self.cy
        return np.array([[self.fx, 0, cx], [0, self.fy, cy], [0, 0, 1]], dtype=np.float64)


def look_pose(position: tuple[float, float, float], yaw_deg: float = 0.0, pitch_deg: float = 0.0) -> np.ndarray:
    """Camera-to-world 4x4 (OpenCV axes) at `position`, looking along +z turned by yaw/pitch."""
    y, p = np.radians(yaw_deg), np.radians(pitch_deg)
    ry = np.array([[np.cos(y), 0, np.sin(y)], [0, 1, 0], [-np.sin(y), 0, np.cos(y)]])
    rx = np.array([[1, 0, 0], [0, np.cos(p), -np.sin(p)], [0, np.sin(p), np.cos(p)]])
    T = np.eye(4)
    T[:3, :3] = ry @ rx
    T[:3, 3] = position
    return T


def orbit(n: int, *, step: float = 0.04, yaw_step: float = 1.5) -> list[np.ndarray]:
    """A sideways walk with a slow turn: n camera-to-world poses."""
    return [
        look_pose((-0.25 + step * i, 0.05 * np.sin(i / 3), 0.02 * i), yaw_deg=-6 + yaw_step * i, pitch_deg=2 * np.sin(i / 4))
        for i in range(n)
    ]


def _cell_value(i: np.ndarray, j: np.ndarray, wall: np.ndarray, seed: int) -> np.ndarray:
    h = (i * 73856093) ^ (j * 19349663) ^ (wall * 83492791) ^ seed * 2654435761
    h = (h ^ (h >> 13)) * 1274126177
    return ((h ^ (h >> 16)) & 0xFF).astype(np.float32) / 255.0


_TINTS = np.array(
    [[1.0, 0.55, 0.5], [0.5, 1.0, 0.6], [0.55, 0.6, 1.0], [1.0, 1.0, 0.5], [0.6, 1.0, 1.0], [1.0, 0.6, 1.0]],
    dtype=np.float32,
)


def _cast(room: Room, cam_to_world: np.ndarray, K: np.ndarray, us: np.ndarray, vs: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Per ray (pixel coords us, vs): z-depth in the camera and the RGB of the wall hit."""
    dirs = np.stack([(us - K[0, 2]) / K[0, 0], (vs - K[1, 2]) / K[1, 1], np.ones_like(us)], axis=-1)
    R, o = cam_to_world[:3, :3], cam_to_world[:3, 3]
    d = dirs @ R.T
    lo, hi = np.asarray(room.lo), np.asarray(room.hi)
    with np.errstate(divide="ignore", invalid="ignore"):
        t_axes = np.where(d > 0, (hi - o) / d, np.where(d < 0, (lo - o) / d, np.inf))
    axis = np.argmin(t_axes, axis=-1)
    t = np.take_along_axis(t_axes, axis[..., None], axis=-1)[..., 0]
    p = o + d * t[..., None]
    side = np.take_along_axis(d, axis[..., None], axis=-1)[..., 0] > 0
    wall = axis * 2 + side.astype(np.int64)
    a = np.take_along_axis(p, ((axis + 1) % 3)[..., None], axis=-1)[..., 0]
    b = np.take_along_axis(p, ((axis + 2) % 3)[..., None], axis=-1)[..., 0]
    ci = np.floor(a / room.cell).astype(np.int64)
    cj = np.floor(b / room.cell).astype(np.int64)
    value = _cell_value(ci, cj, wall, room.seed)
    rgb = (0.15 + 0.85 * value)[..., None] * _TINTS[wall]
    return t.astype(np.float32), rgb


def render(room: Room, camera: PinholeCamera, cam_to_world: np.ndarray, *, supersample: int = 2) -> tuple[np.ndarray, np.ndarray]:
    """RGB (H, W, 3) uint8, anti-aliased, and exact z-depth (H, W) float32 in metres."""
    K = camera.K
    h, w, s = camera.height, camera.width, supersample
    vs, us = np.mgrid[0:h, 0:w].astype(np.float64)
    depth, _ = _cast(room, cam_to_world, K, us, vs)
    sub = (np.arange(s) + 0.5) / s - 0.5
    vss, uss = np.mgrid[0 : h * s, 0 : w * s].astype(np.float64)
    uss = np.floor(uss / s) + sub[(uss % s).astype(int)]
    vss = np.floor(vss / s) + sub[(vss % s).astype(int)]
    _, rgb = _cast(room, cam_to_world, K, uss, vss)
    rgb = rgb.reshape(h, s, w, s, 3).mean(axis=(1, 3))
    return (np.clip(rgb, 0, 1) * 255 + 0.5).astype(np.uint8), depth


def write_video(path: Path, frames: list[np.ndarray], fps: float = 30.0) -> Path:
    """RGB frames -> an MP4 (mp4v) file with OpenCV."""
    import cv2

    h, w = frames[0].shape[:2]
    writer = cv2.VideoWriter(str(path), cv2.VideoWriter_fourcc(*"mp4v"), fps, (w, h))
    if not writer.isOpened():
        raise RuntimeError(f"cannot open a video writer for {path}")
    for rgb in frames:
        writer.write(cv2.cvtColor(rgb, cv2.COLOR_RGB2BGR))
    writer.release()
    return Path(path)
