"""Floor plans from synthetic apartments: point clouds sampled from floors, walls with doorways,
ceilings and furniture, seen from a tilted first camera (so the floor is not axis-aligned).

Checks: room count exact, floor area within 2 %, walls within 3 cm of the truth, and the
exports (SVG, DXF read back with ezdxf, GeoJSON). Figures print with `pytest -s`.
"""

from __future__ import annotations

import io
import json
from dataclasses import dataclass, field

import numpy as np
import pytest
from shapely import contains_xy
from shapely.geometry import LineString, Point, Polygon, box
from shapely.ops import unary_union

from spatialforge.runner.errors import FloorPlanError
from spatialforge.runner.geometry.floorplan import FloorPlan, extract_floorplan
from spatialforge.runner.geometry.floorplan_writers import to_dxf, to_geojson, to_svg


@dataclass
class Apartment:
    """Rooms (interior outlines, metres, z up), door passages through walls, furniture boxes."""

    rooms: list[Polygon]
    doors: list[tuple[Polygon, float]] = field(default_factory=list)  # passage footprint, door height
    furniture: list[tuple[float, float, float, float, float]] = field(default_factory=list)  # x0 y0 x1 y1 h
    height: float = 2.5


def _area_samples(poly: Polygon, density: float, rng: np.random.Generator) -> np.ndarray:
    x0, y0, x1, y1 = poly.bounds
    n = rng.poisson(density * (x1 - x0) * (y1 - y0))
    xy = rng.uniform([x0, y0], [x1, y1], size=(n, 2))
    return xy[contains_xy(poly, xy[:, 0], xy[:, 1])]


def _face(a: np.ndarray, b: np.ndarray, z0: float, z1: float, density: float, rng: np.random.Generator) -> np.ndarray:
    """Points on the vertical rectangle above segment a-b between heights z0 and z1."""
    length = float(np.linalg.norm(b - a))
    n = rng.poisson(density * length * (z1 - z0))
    s = rng.uniform(0, 1, n)
    xy = a + s[:, None] * (b - a)
    return np.column_stack([xy, rng.uniform(z0, z1, n)])


def sample_apartment(apt: Apartment, *, density: float = 3500.0, noise: float = 0.002, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """(points, normals) in the apartment frame (z up), as a scan from inside would see them."""
    rng = np.random.default_rng(seed)
    pts: list[np.ndarray] = []
    nrm: list[np.ndarray] = []

    def add(p: np.ndarray, n: np.ndarray) -> None:
        pts.append(p)
        nrm.append(np.broadcast_to(n, p.shape).copy())

    footprints = unary_union([box(x0, y0, x1, y1) for x0, y0, x1, y1, _ in apt.furniture]) if apt.furniture else None
    floor_area = unary_union(apt.rooms + [d for d, _ in apt.doors])
    if footprints is not None:
        floor_area = floor_area.difference(footprints)  # hidden under the furniture
    for g in getattr(floor_area, "geoms", [floor_area]):
        xy = _area_samples(g, density, rng)
        add(np.column_stack([xy, np.zeros(len(xy))]), np.array([0, 0, 1.0]))
    for room in apt.rooms:
        xy = _area_samples(room, density, rng)
        add(np.column_stack([xy, np.full(len(xy), apt.height)]), np.array([0, 0, -1.0]))
    openings = [(d.buffer(0.003), h) for d, h in apt.doors]
    for room in apt.rooms:
        ring = np.asarray(room.exterior.coords)
        ccw = room.exterior.is_ccw
        for a, b in zip(ring[:-1], ring[1:]):
            p = _face(a, b, 0.0, apt.height, density, rng)
            keep = np.ones(len(p), bool)
            for d, h in openings:
                keep &= ~(contains_xy(d, p[:, 0], p[:, 1]) & (p[:, 2] < h))
            for x0, y0, x1, y1, h in apt.furniture:  # the wall behind furniture is hidden below its top
                near = (p[:, 0] > x0 - 0.05) & (p[:, 0] < x1 + 0.05) & (p[:, 1] > y0 - 0.05) & (p[:, 1] < y1 + 0.05)
                keep &= ~(near & (p[:, 2] < h))
            t = (b - a) / np.linalg.norm(b - a)
            inward = np.array([-t[1], t[0], 0.0]) if ccw else np.array([t[1], -t[0], 0.0])
            add(p[keep], inward)
    rooms_union = unary_union(apt.rooms)
    for d, h in apt.doors:  # jambs (the passage sides that are not openings) and the lintel's underside
        ring = np.asarray(d.exterior.coords)
        for a, b in zip(ring[:-1], ring[1:]):
            mid = Point((a + b) / 2)
            if rooms_union.boundary.distance(mid) < 0.003:
                continue  # the opening itself
            p = _face(a, b, 0.0, h, density, rng)
            t = (b - a) / np.linalg.norm(b - a)
            n = np.array([-t[1], t[0], 0.0])
            if not d.contains(Point(*(mid.coords[0] + 0.01 * n[:2]))):
                n = -n
            add(p, n)
        xy = _area_samples(d, density, rng)
        add(np.column_stack([xy, np.full(len(xy), h)]), np.array([0, 0, -1.0]))
    for x0, y0, x1, y1, h in apt.furniture:
        xy = _area_samples(box(x0, y0, x1, y1), density, rng)
        add(np.column_stack([xy, np.full(len(xy), h)]), np.array([0, 0, 1.0]))
        corners = np.array([[x0, y0], [x1, y0], [x1, y1], [x0, y1], [x0, y0]])
        for a, b in zip(corners[:-1], corners[1:]):
            t = (b - a) / np.linalg.norm(b - a)
            add(_face(a, b, 0.0, h, density, rng), np.array([t[1], -t[0], 0.0]))
    p = np.vstack(pts)
    n = np.vstack(nrm)
    return p + rng.normal(0, noise, p.shape), n


def camera_pose(position: tuple[float, float, float], rng: np.random.Generator) -> np.ndarray:
    """Apartment -> first-camera (OpenCV: x right, y down, z forward) 4x4, randomly yawed and tilted."""
    yaw = rng.uniform(0, 2 * np.pi)
    pitch = np.radians(rng.uniform(-35, 10))
    roll = np.radians(rng.uniform(-15, 15))
    up = np.array([0, 0, 1.0])
    f = np.cos(pitch) * np.array([np.cos(yaw), np.sin(yaw), 0]) + np.sin(pitch) * up
    r = np.cross(f, up)
    r /= np.linalg.norm(r)
    d = np.cross(f, r)
    c, s = np.cos(roll), np.sin(roll)
    r, d = c * r + s * d, -s * r + c * d
    R = np.column_stack([r, d, f])  # camera -> apartment
    T = np.eye(4)
    T[:3, :3] = R.T
    T[:3, 3] = -R.T @ np.asarray(position)
    return T


def scan(apt: Apartment, position: tuple[float, float, float], seed: int, **kw) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """World points, normals and the apartment -> world transform."""
    p, n = sample_apartment(apt, seed=seed, **kw)
    T = camera_pose(position, np.random.default_rng(seed + 100))
    return p @ T[:3, :3].T + T[:3, 3], n @ T[:3, :3].T, T


def check(plan: FloorPlan, apt: Apartment, apt_to_world: np.ndarray, label: str) -> dict:
    """Assert the accuracy targets; return the figures."""
    to_plan = np.linalg.inv(plan.plan_to_world) @ apt_to_world
    true_up = apt_to_world[:3, :3] @ np.array([0, 0, 1.0])
    up_err = float(np.degrees(np.arccos(np.clip(plan.up @ true_up, -1, 1))))

    def tf(poly: Polygon) -> Polygon:
        xy = np.asarray(poly.exterior.coords)
        p3 = np.column_stack([xy, np.zeros(len(xy))]) @ to_plan[:3, :3].T + to_plan[:3, 3]
        return Polygon(p3[:, :2])

    floor_z = np.column_stack([np.asarray(apt.rooms[0].exterior.coords), np.zeros(len(apt.rooms[0].exterior.coords))]) @ to_plan[:3, :3].T + to_plan[:3, 3]
    truth = [tf(r) for r in apt.rooms]
    doors = [tf(d).buffer(0.15) for d, _ in apt.doors]
    est = [Polygon(r.polygon) for r in plan.rooms]
    true_area = sum(t.area for t in truth)
    area_err = abs(plan.area_m2 - true_area) / true_area
    worst_wall = 0.0
    worst_vertex = 0.0
    room_area_err = 0.0
    for t in truth:
        e = max(est, key=lambda g: g.intersection(t).area)
        room_area_err = max(room_area_err, abs(e.area - t.area) / t.area)
        ring = LineString(t.exterior.coords)
        samples = [ring.interpolate(s) for s in np.arange(0, ring.length, 0.01)]
        d = [e.exterior.distance(q) for q in samples if not any(dd.contains(q) for dd in doors)]
        worst_wall = max(worst_wall, max(d))
        v = [t.exterior.distance(Point(q)) for q in e.exterior.coords if not any(dd.contains(Point(q)) for dd in doors)]
        worst_vertex = max(worst_vertex, max(v))
    figures = {
        "case": label, "rooms": plan.room_count, "true_rooms": len(truth), "area_m2": round(plan.area_m2, 3),
        "true_area_m2": round(true_area, 3), "area_err_pct": round(100 * area_err, 2),
        "worst_room_area_err_pct": round(100 * room_area_err, 2),
        "wall_err_max_cm": round(100 * worst_wall, 2), "vertex_err_max_cm": round(100 * worst_vertex, 2),
        "up_err_deg": round(up_err, 3), "floor_height_err_cm": round(100 * float(np.abs(floor_z[:, 2]).max()), 2),
        "ceiling_m": plan.ceiling_height_m and round(plan.ceiling_height_m, 3),
    }
    print(json.dumps(figures))
    assert plan.room_count == len(truth), figures
    assert area_err <= 0.02, figures
    assert room_area_err <= 0.02, figures
    assert worst_wall <= 0.03, figures
    assert worst_vertex <= 0.03, figures
    assert up_err < 0.5, figures
    assert abs(floor_z[:, 2]).max() < 0.01, figures
    return figures


L_ROOM = Apartment(rooms=[Polygon([(0, 0), (5, 0), (5, 3), (2.5, 3), (2.5, 6), (0, 6)])])
TWO_ROOMS = Apartment(
    rooms=[box(0, 0, 4, 3.5), box(4.12, 0, 7.6, 3.5)],
    doors=[(box(4, 1.2, 4.12, 2.1), 2.05)],
)
FURNISHED = Apartment(
    rooms=[box(0, 0, 5, 4)],
    furniture=[
        (0.1, 3.4, 1.3, 4.0, 2.0),  # wardrobe against the back wall, taller than the slice
        (4.7, 1.0, 5.0, 2.6, 1.8),  # bookshelf against the right wall
        (2.0, 1.5, 4.0, 2.4, 0.8),  # sofa
        (0.8, 0.5, 1.8, 1.3, 0.75),  # table
        (0.0, 0.0, 0.6, 0.6, 0.9),  # cabinet in a corner
    ],
)


@pytest.mark.parametrize(
    ("apt", "position", "label"),
    [(L_ROOM, (1.2, 1.5, 1.4), "l-shaped"), (TWO_ROOMS, (1.5, 1.5, 1.5), "two-rooms-doorway"), (FURNISHED, (2.5, 0.8, 1.3), "furnished")],
)
def test_apartments(apt: Apartment, position: tuple[float, float, float], label: str) -> None:
    points, normals, T = scan(apt, position, seed=len(label))
    plan = extract_floorplan(points, normals)
    check(plan, apt, T, label)


def test_normals_estimated_when_missing() -> None:
    points, _, T = scan(TWO_ROOMS, (5.5, 2.0, 1.5), seed=3)
    plan = extract_floorplan(points)
    check(plan, TWO_ROOMS, T, "two-rooms-no-normals")


def test_three_rooms_in_a_row() -> None:
    apt = Apartment(
        rooms=[box(0, 0, 3.5, 3), box(3.1 + 0.5, 0, 6, 3), box(0, 3.12, 6, 5.5)],
        doors=[(box(3.5, 1.0, 3.6, 1.9), 2.0), (box(1.0, 3.0, 1.9, 3.12), 2.0), (box(4.5, 3.0, 5.3, 3.12), 2.0)],
    )
    points, normals, T = scan(apt, (1.5, 1.5, 1.5), seed=11)
    check(extract_floorplan(points, normals), apt, T, "three-rooms")


def test_rooms_off_a_corridor() -> None:
    """Six rooms: three in a row, a 1.28 m corridor with five doors, two behind it. The corridor
    is one room (not cut at every door), and no room keeps a door's passage."""
    t = 0.12
    apt = Apartment(
        rooms=[box(0, 0, 5, 4), box(5 + t, 0, 9, 4), box(9 + t, 0, 12, 4), box(0, 4 + t, 12, 5.4),
               box(0, 5.4 + t, 6, 10), box(6 + t, 5.4 + t, 12, 10)],
        doors=[(box(5, 1.5, 5 + t, 2.4), 2.05), (box(9, 1.5, 9 + t, 2.4), 2.05), (box(1, 4, 1.9, 4 + t), 2.05),
               (box(6, 4, 6.9, 4 + t), 2.05), (box(10, 4, 10.9, 4 + t), 2.05), (box(2, 5.4, 2.9, 5.4 + t), 2.05),
               (box(8, 5.4, 8.9, 5.4 + t), 2.05)],
    )
    points, normals, T = scan(apt, (2.0, 2.0, 1.5), seed=4, density=1500)
    check(extract_floorplan(points, normals), apt, T, "six-rooms-corridor")


def test_exports() -> None:
    import ezdxf

    points, normals, _ = scan(TWO_ROOMS, (1.5, 1.5, 1.5), seed=5)
    plan = extract_floorplan(points, normals)
    svg = to_svg(plan)
    assert svg.startswith("<svg") and svg.count("<polygon") == 2 and "m²" in svg
    doc = ezdxf.read(io.StringIO(to_dxf(plan).decode()))
    polys = [e for e in doc.modelspace() if e.dxftype() == "LWPOLYLINE"]
    assert len(polys) == 2 and all(p.closed for p in polys)
    areas = sorted(Polygon(list(p.vertices())).area for p in polys)
    assert areas == pytest.approx(sorted(r.area_m2 for r in plan.rooms), rel=1e-6)
    gj = to_geojson(plan)
    assert gj["type"] == "FeatureCollection" and len(gj["features"]) == 2
    ring = gj["features"][0]["geometry"]["coordinates"][0]
    assert ring[0] == ring[-1]
    assert gj["spatialforge"]["room_count"] == 2
    assert sum(f["properties"]["area_m2"] for f in gj["features"]) == pytest.approx(plan.area_m2, abs=0.01)
    assert plan.summary()["roomCount"] == 2


def test_bad_input_is_a_clear_error() -> None:
    with pytest.raises(FloorPlanError, match="N x 3"):
        extract_floorplan(np.zeros((10, 2)))
    with pytest.raises(FloorPlanError, match="too few points"):
        extract_floorplan(np.random.default_rng(0).normal(size=(50, 3)))
    # a lone plane (a table top, no walls): no floor plan
    rng = np.random.default_rng(1)
    table = np.column_stack([rng.uniform(0, 2, 20000), np.full(20000, 1.0), rng.uniform(1, 3, 20000)])
    with pytest.raises(FloorPlanError):
        extract_floorplan(table, np.tile([0, 1.0, 0], (20000, 1)))


# --- fused from rendered depth --------------------------------------------------------------------

TWO_ROOM_SOLIDS = [  # (lo, hi) solid boxes in the apartment frame (z up) of TWO_ROOMS, walls 12 cm
    ((-0.2, -0.2, -0.1), (7.8, 3.7, 0.0)),  # floor slab
    ((-0.2, -0.2, 2.5), (7.8, 3.7, 2.6)),  # ceiling slab
    ((-0.12, -0.12, 0.0), (0.0, 3.62, 2.5)),
    ((7.6, -0.12, 0.0), (7.72, 3.62, 2.5)),
    ((-0.12, -0.12, 0.0), (7.72, 0.0, 2.5)),
    ((-0.12, 3.5, 0.0), (7.72, 3.62, 2.5)),
    ((4.0, 0.0, 0.0), (4.12, 1.2, 2.5)),  # the partition, its doorway and lintel
    ((4.0, 2.1, 0.0), (4.12, 3.5, 2.5)),
    ((4.0, 1.2, 2.05), (4.12, 2.1, 2.5)),
    ((6.2, 2.8, 0.0), (7.6, 3.5, 0.9)),  # a sideboard against the north wall
    ((1.5, 1.0, 0.0), (2.5, 1.8, 0.75)),  # a table
]


def render_solids(solids: list, cam_to_apt: np.ndarray, K: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """Z-depth (H, W) of the first outside face of any solid box hit by each pixel's ray."""
    w, h = size
    vs, us = np.mgrid[0:h, 0:w].astype(np.float64)
    dirs = np.stack([(us - K[0, 2]) / K[0, 0], (vs - K[1, 2]) / K[1, 1], np.ones_like(us)], axis=-1).reshape(-1, 3)
    d = dirs @ cam_to_apt[:3, :3].T
    o = cam_to_apt[:3, 3]
    best = np.full(len(d), np.inf)
    with np.errstate(divide="ignore", invalid="ignore"):
        inv = 1.0 / d
        for lo, hi in solids:
            t1, t2 = (np.asarray(lo) - o) * inv, (np.asarray(hi) - o) * inv
            tn = np.nanmax(np.minimum(t1, t2), axis=1)
            tf = np.nanmin(np.maximum(t1, t2), axis=1)
            hit = (tn <= tf) & (tn > 1e-6) & (tn < best)
            best[hit] = tn[hit]
    best[~np.isfinite(best)] = 0.0
    return best.reshape(h, w).astype(np.float32)


def look(position: tuple[float, float, float], yaw_deg: float, pitch_deg: float) -> np.ndarray:
    """Camera -> apartment 4x4 (OpenCV camera axes) at `position`, z-up apartment."""
    yaw, pitch = np.radians(yaw_deg), np.radians(pitch_deg)
    up = np.array([0, 0, 1.0])
    f = np.cos(pitch) * np.array([np.cos(yaw), np.sin(yaw), 0]) + np.sin(pitch) * up
    r = np.cross(f, up)
    r /= np.linalg.norm(r)
    T = np.eye(4)
    T[:3, :3] = np.column_stack([r, np.cross(f, r), f])
    T[:3, 3] = position
    return T


def test_fused_from_rendered_depth() -> None:
    """Ground-truth depth along a walk through both rooms, TSDF-fused by the reconstruction's own
    fusion (geometry/fusion.py), in the first camera's frame: the floor plan of TWO_ROOMS."""
    from spatialforge.runner.geometry.fusion import fuse

    size = (240, 180)
    K = np.array([[165.0, 0, 119.5], [0, 165.0, 89.5], [0, 0, 1]])  # 72 degrees across
    path = []
    for centre, start in (((2.0, 1.75, 1.45), 10.0), ((5.8, 1.6, 1.5), 190.0)):
        for i in range(8):
            for pitch in (-28.0, 12.0):
                path.append(look(centre, start + 45 * i, pitch))
        if centre[0] < 4:  # through the doorway
            path += [look((x, 1.65, 1.5), 0.0, -15.0) for x in (3.2, 3.8, 4.4, 5.0)]
    depths = [render_solids(TWO_ROOM_SOLIDS, T, K, size) for T in path]
    images = [np.full((size[1], size[0], 3), 128, np.uint8) for _ in path]
    first = np.linalg.inv(path[0])  # apartment -> first camera (the world frame)
    fused = fuse(images, depths, [first @ T for T in path], K, voxel_size=0.02, depth_max=9.0)
    pcd = fused.point_cloud
    normals = pcd.point.normals.numpy() if "normals" in pcd.point else None
    plan = extract_floorplan(fused.points, normals)
    check(plan, TWO_ROOMS, first, "two-rooms-fused-tsdf")


def test_walk_that_starts_looking_at_the_floor() -> None:
    """A first camera pitched 80 degrees down (its "up" is nearly horizontal): the walk's poses
    tell up instead."""
    apt_to_world = np.linalg.inv(look((2.0, 1.5, 1.5), 0.0, -80.0))
    walk = [apt_to_world @ look((2.0 + 0.3 * i, 1.5, 1.5), 40.0 * i, p) for i in range(8) for p in (-30.0, 10.0)]
    p, n = sample_apartment(TWO_ROOMS, seed=6)
    points, normals = p @ apt_to_world[:3, :3].T + apt_to_world[:3, 3], n @ apt_to_world[:3, :3].T
    plan = extract_floorplan(points, normals, camera_poses=walk)
    check(plan, TWO_ROOMS, apt_to_world, "first-camera-at-the-floor")
