"""Synthetic scenes with known geometry, for accuracy tests, benchmarks and demos.

A camera moves inside a box-shaped room (optionally furnished with solid boxes) whose
surfaces carry a texture: random cells (high contrast) or plaster-like multi-scale value
noise (what real walls look like to a feature detector). Ray casting in numpy gives exact
RGB, depth and poses. No network, no files.
"""

from __future__ import annotations

from dataclasses import dataclass, field, fields, replace
from pathlib import Path

import numpy as np

BoxBounds = tuple[tuple[float, float, float], tuple[float, float, float]]


@dataclass(frozen=True, kw_only=True)
class Room:
    """An axis-aligned box seen from inside, with solid axis-aligned `boxes` (furniture) in it.

    World axes follow the first camera of `walk`: x right, y down (the floor is at `hi[1]`),
    z forward. `texture` is "cells" (cells of `cell` metres) or "plaster" (value noise).
    """

    lo: tuple[float, float, float] = (-1.6, -1.0, -1.0)
    hi: tuple[float, float, float] = (1.6, 1.0, 2.6)
    boxes: tuple[BoxBounds, ...] = ()
    cell: float = 0.05
    texture: str = "cells"
    seed: int = 7

    def distance(self, points: np.ndarray) -> np.ndarray:
        """Distance from each point (N, 3) to the nearest surface (walls, floor, ceiling, boxes)."""
        lo, hi = np.asarray(self.lo), np.asarray(self.hi)
        best = np.minimum(np.abs(points - lo), np.abs(points - hi)).min(axis=1)
        for blo, bhi in self.boxes:
            blo_a, bhi_a = np.asarray(blo), np.asarray(bhi)
            outside = np.maximum(np.maximum(blo_a - points, points - bhi_a), 0.0)
            d_out = np.linalg.norm(outside, axis=1)
            d_in = np.minimum(points - blo_a, bhi_a - points).min(axis=1)
            best = np.minimum(best, np.where(d_out > 0, d_out, np.abs(d_in)))
        return best

    @property
    def floor_area(self) -> float:
        """Floor area of the room in m² (x by z), furniture included."""
        return float((self.hi[0] - self.lo[0]) * (self.hi[2] - self.lo[2]))


def furnished_room(seed: int = 11) -> Room:
    """A 4.4 x 5.2 x 2.6 m room with plaster-like walls, a table, a sofa, cabinets and a shelf.

    The floor is at y = 1.4 (an eye height of 1.4 m above it for a camera at y = 0).
    """
    floor = 1.4
    boxes: tuple[BoxBounds, ...] = (
        ((-0.45, floor - 0.75, -0.7), (0.45, floor, 0.7)),  # table in the middle
        ((-2.2, floor - 0.85, -1.9), (-1.65, floor, -0.3)),  # sofa along the left wall
        ((1.75, floor - 2.0, 0.6), (2.2, floor, 1.6)),  # tall cabinet on the right wall
        ((-1.2, floor - 0.9, 2.15), (0.2, floor, 2.6)),  # sideboard at the far wall
        ((0.8, floor - 1.6, -2.6), (1.7, floor, -2.25)),  # shelf at the near wall
        ((-0.25, floor - 0.95, -0.25), (0.25, floor - 0.75, 0.25)),  # a box on the table
    )
    return Room(lo=(-2.2, floor - 2.6, -2.6), hi=(2.2, floor, 2.6), boxes=boxes, texture="plaster", cell=0.02, seed=seed)


def _against_walls(size: tuple[float, float], height: float, pieces: dict[str, tuple[float, float, float, float, float, float]],
                   *, seed: int) -> Room:
    """A `size` (x by z) room of `height` with its floor at y = 1.5 (eye height for a camera at
    y = 0), furnished with `pieces`: name -> (x0, z0, x1, z1, bottom, top) above the floor."""
    floor = 1.5
    sx, sz = size[0] / 2, size[1] / 2
    boxes = tuple(((x0, floor - top, z0), (x1, floor - bottom, z1)) for x0, z0, x1, z1, bottom, top in pieces.values())
    return Room(lo=(-sx, floor - height, -sz), hi=(sx, floor, sz), boxes=boxes, texture="plaster", cell=0.02, seed=seed)


def living_room() -> Room:
    """5 x 4 x 2.5 m: a 2.1 m wardrobe in a corner, a 1.8 m bookcase and a sofa against walls, a table."""
    return _against_walls((5.0, 4.0), 2.5, {
        "wardrobe": (-2.5, 1.4, -1.3, 2.0, 0.0, 2.1),
        "bookcase": (2.2, -0.6, 2.5, 0.5, 0.0, 1.8),
        "sofa": (-2.5, -1.3, -1.6, 0.6, 0.0, 0.85),
        "table": (-0.4, -0.4, 0.6, 0.3, 0.0, 0.75),
    }, seed=21)


def kitchen(cabinet_top: float = 2.2) -> Room:
    """4.2 x 3.4 x 2.6 m: a 0.9 m counter along one wall with wall cabinets above it (from 1.45 m
    to `cabinet_top`), a 1.9 m fridge at its end, a table."""
    return _against_walls((4.2, 3.4), 2.6, {
        "counter": (-2.1, 1.1, 1.4, 1.7, 0.0, 0.9),
        "wall cabinets": (-2.1, 1.35, 1.4, 1.7, 1.45, cabinet_top),
        "fridge": (1.4, 1.05, 2.1, 1.7, 0.0, 1.9),
        "table": (-0.6, -1.0, 0.4, -0.2, 0.0, 0.75),
    }, seed=22)


def bedroom() -> Room:
    """4.5 x 3.8 x 2.5 m: a bed in a corner, a night stand, a 2.0 m wardrobe against the far wall."""
    return _against_walls((4.5, 3.8), 2.5, {
        "bed": (-2.25, -0.2, -0.65, 1.9, 0.0, 0.55),
        "night stand": (-0.6, 1.45, -0.15, 1.9, 0.0, 0.6),
        "wardrobe": (0.6, -1.9, 2.0, -1.3, 0.0, 2.0),
    }, seed=23)


def room_tour(room: Room, *, pitches: tuple[float, ...] = (-25.0, 5.0), yaws: int = 8) -> list[np.ndarray]:
    """Camera-to-world poses of a walk at eye height (y = 0) through the free middle of `room`:
    three stops on its long axis, `yaws` headings at each, each heading at every pitch (degrees,
    positive up). Level or downward pitches see the walls' upper parts and little ceiling."""
    (x0, _, z0), (x1, _, z1) = room.lo, room.hi
    cx, cz = (x0 + x1) / 2, (z0 + z1) / 2
    along_x = x1 - x0 >= z1 - z0
    half = 0.22 * max(x1 - x0, z1 - z0)
    stops = [(cx + s * half, cz) if along_x else (cx, cz + s * half) for s in (-1.0, 0.0, 1.0)]
    return [look_pose((x, 0.0, z), yaw_deg=k * 360.0 / yaws + 20.0 * i, pitch_deg=p)
            for i, (x, z) in enumerate(stops) for k in range(yaws) for p in pitches]


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

    def scaled(self, width: int, height: int) -> PinholeCamera:
        """The camera of this image resized to width x height (pixel centres at integers)."""
        K = self.K
        sx, sy = width / self.width, height / self.height
        return PinholeCamera(
            width=width, height=height, fx=self.fx * sx, fy=self.fy * sy,
            cx=(K[0, 2] + 0.5) * sx - 0.5, cy=(K[1, 2] + 0.5) * sy - 0.5,
        )


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


def walk(n: int, *, fraction: float = 1.0, rx: float = 1.35, rz: float = 1.75) -> list[np.ndarray]:
    """A closed walk around the table of `furnished_room`: an ellipse of about 9.8 m.

    The camera looks ahead and 50 degrees outwards (towards the walls), tilting between 20
    degrees down and 10 degrees up (floor and ceiling both get seen), with a little bobbing; it turns 360 degrees and ends where it began. `fraction` < 1 cuts
    the walk short (n poses over that part of it). Poses are in the room's frame.
    """
    poses = []
    for i in range(n):
        a = 2 * np.pi * fraction * i / max(n - 1, 1)
        pos = np.array([rx * np.sin(a), 0.03 * np.sin(5 * a), -rz * np.cos(a)])
        tangent = np.array([rx * np.cos(a), 0.0, rz * np.sin(a)])
        yaw = np.degrees(np.arctan2(tangent[0], tangent[2])) - 50.0
        poses.append(look_pose(tuple(pos), yaw_deg=yaw, pitch_deg=-5 + 15 * np.sin(3 * a)))
    return poses


def path_length(poses: list[np.ndarray]) -> float:
    return float(sum(np.linalg.norm(b[:3, 3] - a[:3, 3]) for a, b in zip(poses, poses[1:])))


def _hash(i: np.ndarray, j: np.ndarray, wall: np.ndarray, seed: int) -> np.ndarray:
    h = (i * 73856093) ^ (j * 19349663) ^ (wall * 83492791) ^ seed * 2654435761
    h = (h ^ (h >> 13)) * 1274126177
    return ((h ^ (h >> 16)) & 0xFF).astype(np.float32) / 255.0


_cell_value = _hash


def _value_noise(a: np.ndarray, b: np.ndarray, wall: np.ndarray, seed: int, cell: float) -> np.ndarray:
    """Plaster: four octaves of bilinear value noise, from 24 to 1 cells of `cell` metres."""
    out = np.zeros(a.shape, np.float32)
    total = 0.0
    for octave, (scale, amp) in enumerate(((24.0, 0.35), (8.0, 0.3), (3.0, 0.25), (1.0, 0.2))):
        s = cell * scale
        fa, fb = a / s, b / s
        ia, ib = np.floor(fa).astype(np.int64), np.floor(fb).astype(np.int64)
        ta, tb = (fa - ia).astype(np.float32), (fb - ib).astype(np.float32)
        sd = seed + 101 * octave
        v00, v10 = _hash(ia, ib, wall, sd), _hash(ia + 1, ib, wall, sd)
        v01, v11 = _hash(ia, ib + 1, wall, sd), _hash(ia + 1, ib + 1, wall, sd)
        out += amp * ((v00 * (1 - ta) + v10 * ta) * (1 - tb) + (v01 * (1 - ta) + v11 * ta) * tb)
        total += amp
    return out / total


_TINTS = np.array(
    [[1.0, 0.55, 0.5], [0.5, 1.0, 0.6], [0.55, 0.6, 1.0], [1.0, 1.0, 0.5], [0.6, 1.0, 1.0], [1.0, 0.6, 1.0]],
    dtype=np.float32,
)


def _cast(room: Room, cam_to_world: np.ndarray, K: np.ndarray, us: np.ndarray, vs: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Per ray (pixel coords us, vs): z-depth in the camera and the RGB of the surface hit."""
    dirs = np.stack([(us - K[0, 2]) / K[0, 0], (vs - K[1, 2]) / K[1, 1], np.ones_like(us)], axis=-1)
    R, o = cam_to_world[:3, :3], cam_to_world[:3, 3]
    d = dirs @ R.T
    lo, hi = np.asarray(room.lo), np.asarray(room.hi)
    with np.errstate(divide="ignore", invalid="ignore"):
        t_axes = np.where(d > 0, (hi - o) / d, np.where(d < 0, (lo - o) / d, np.inf))
        axis = np.argmin(t_axes, axis=-1)
        t = np.take_along_axis(t_axes, axis[..., None], axis=-1)[..., 0]
        side = np.take_along_axis(d, axis[..., None], axis=-1)[..., 0] > 0
        wall = axis * 2 + side.astype(np.int64)
        dx, dy, dz = d[..., 0], d[..., 1], d[..., 2]
        for k, (blo, bhi) in enumerate(room.boxes):
            near, far = [], []
            for c, dc in enumerate((dx, dy, dz)):
                t1, t2 = (blo[c] - o[c]) / dc, (bhi[c] - o[c]) / dc
                near.append(np.minimum(t1, t2))
                far.append(np.maximum(t1, t2))
            t_in = np.maximum(np.maximum(near[0], near[1]), near[2])
            t_out = np.minimum(np.minimum(far[0], far[1]), far[2])
            hit = (t_in <= t_out) & (t_in > 1e-6) & (t_in < t)
            if not hit.any():
                continue
            face_axis = np.where(near[0] == t_in, 0, np.where(near[1] == t_in, 1, 2))
            t = np.where(hit, t_in, t)
            axis = np.where(hit, face_axis, axis)
            face_side = np.take_along_axis(d, face_axis[..., None], axis=-1)[..., 0] < 0
            wall = np.where(hit, 6 + 6 * k + face_axis * 2 + face_side.astype(np.int64), wall)
    p = o + d * t[..., None]
    a = np.take_along_axis(p, ((axis + 1) % 3)[..., None], axis=-1)[..., 0]
    b = np.take_along_axis(p, ((axis + 2) % 3)[..., None], axis=-1)[..., 0]
    if room.texture == "plaster":
        value = _value_noise(a, b, wall, room.seed, room.cell)
        value = np.clip((value - 0.5) * 2.2 + 0.5, 0.0, 1.0)
        rgb = (0.25 + 0.7 * value)[..., None] * _TINTS[(wall + room.seed) % len(_TINTS)]
    else:
        ci = np.floor(a / room.cell).astype(np.int64)
        cj = np.floor(b / room.cell).astype(np.int64)
        value = _hash(ci, cj, wall, room.seed)
        rgb = (0.15 + 0.85 * value)[..., None] * _TINTS[wall % len(_TINTS)]
    return t.astype(np.float32), rgb


def render(room: Room, camera: PinholeCamera, cam_to_world: np.ndarray, *, supersample: int = 2) -> tuple[np.ndarray, np.ndarray]:
    """RGB (H, W, 3) uint8, anti-aliased, and exact z-depth (H, W) float32 in metres."""
    K = camera.K
    h, w, s = camera.height, camera.width, supersample
    vs, us = np.mgrid[0:h, 0:w].astype(np.float64)
    depth, rgb1 = _cast(room, cam_to_world, K, us, vs)
    if s == 1:
        return (np.clip(rgb1, 0, 1) * 255 + 0.5).astype(np.uint8), depth
    sub = (np.arange(s) + 0.5) / s - 0.5
    vss, uss = np.mgrid[0 : h * s, 0 : w * s].astype(np.float64)
    uss = np.floor(uss / s) + sub[(uss % s).astype(int)]
    vss = np.floor(vss / s) + sub[(vss % s).astype(int)]
    _, rgb = _cast(room, cam_to_world, K, uss, vss)
    rgb = rgb.reshape(h, s, w, s, 3).mean(axis=(1, 3))
    return (np.clip(rgb, 0, 1) * 255 + 0.5).astype(np.uint8), depth


@dataclass(frozen=True, kw_only=True)
class MonoErrors:
    """How a monocular depth network errs, each error with its own strength (0 turns it off).

    Defaults are the strengths an outside check used on this project: a per-frame scale error
    (σ 4 %), a smooth low-frequency warp (at most ±3 %, at most one cycle across the image),
    depth smeared across object edges (flying pixels over `edge_px` pixels of a 518-px network
    input) and per-pixel noise (σ 1 %). With all four, the pipeline as it stood reproduced
    that check's figures (9.3 mm ATE against 11.2, mesh p50 10.3 mm against 10.2, p95 62
    against 62 mm).
    """

    scale: float = 0.04
    warp: float = 0.03
    edge_px: float = 3.0
    noise: float = 0.01

    def only(self, *names: str) -> MonoErrors:
        """These errors at this model's strengths, the others off."""
        return replace(self, **{f.name: 0.0 for f in fields(self) if f.name not in names})


NETWORK_SIDE = 518  # the longer side a V2 network sees: edge smear is that many pixels wide there
WARP_CYCLES = 1.0  # the warp's plane waves make at most one cycle across the image


def render_path(room: Room, camera: PinholeCamera, poses: list[np.ndarray]) -> tuple[list[np.ndarray], list[np.ndarray]]:
    """RGB images and true depth maps along camera poses (one sample a pixel, as the tests use)."""
    frames = [render(room, camera, T, supersample=1) for T in poses]
    return [f[0] for f in frames], [f[1] for f in frames]


def monocular_like(depth: np.ndarray, rng: np.random.Generator, errors: MonoErrors = MonoErrors()) -> np.ndarray:
    """True depth as a monocular network gets it wrong (`MonoErrors`), float32 metres."""
    import cv2

    h, w = depth.shape
    out = depth.astype(np.float32).copy()
    if errors.edge_px > 0:
        # A network's output is smooth where the scene is not: across an occluding edge the
        # depth runs from the near surface to the far one through points in empty space.
        sigma = errors.edge_px / 2 * max(h, w) / NETWORK_SIDE
        out = cv2.GaussianBlur(out, (0, 0), sigmaX=sigma, borderType=cv2.BORDER_REPLICATE)
    if errors.warp > 0:
        vs, us = np.mgrid[0:h, 0:w].astype(np.float32)
        wave = np.zeros((h, w), np.float32)
        for _ in range(6):  # random plane waves, summed and scaled to a peak of `warp`
            fx, fy = rng.uniform(-WARP_CYCLES, WARP_CYCLES, size=2)
            wave += np.cos(2 * np.pi * (fx * us / w + fy * vs / h) + rng.uniform(0, 2 * np.pi)).astype(np.float32)
        wave -= wave.mean()
        out *= 1.0 + wave * np.float32(errors.warp / max(float(np.abs(wave).max()), 1e-9))
    if errors.scale > 0:
        out *= np.float32(np.clip(1.0 + rng.normal(0.0, errors.scale), 0.8, 1.2))
    if errors.noise > 0:
        out *= 1.0 + rng.normal(0.0, errors.noise, size=(h, w)).astype(np.float32)
    return out


def write_video(path: Path, frames: list[np.ndarray], fps: float = 30.0, fourcc: str = "mp4v") -> Path:
    """RGB frames -> a video file with OpenCV (mp4v in .mp4, MJPG in .avi)."""
    import cv2

    h, w = frames[0].shape[:2]
    writer = cv2.VideoWriter(str(path), cv2.VideoWriter_fourcc(*fourcc), fps, (w, h))
    if not writer.isOpened():
        raise RuntimeError(f"cannot open a video writer for {path}")
    for rgb in frames:
        writer.write(cv2.cvtColor(rgb, cv2.COLOR_RGB2BGR))
    writer.release()
    return Path(path)
