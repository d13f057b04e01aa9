"""Floor plans from synthetic apartments: point clouds sampled from floors, walls with doorways,
ceilings and furniture, seen from a tilted first camera (so the floor is not axis-aligned).

Checks: room count exact, floor area within 2 %, walls within 3 cm of the truth, and the
exports (SVG, DXF read back with ezdxf, GeoJSON). Figures print with `pytest -s`.
"""

from __future__ import annotations

import io
import json
from dataclasses import dataclass, field, replace

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
    ceiling: bool = True  # False: a scan that never saw the ceiling


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
    for room in apt.rooms if apt.ceiling else ():
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
            if rooms_union.boundary.distance(LineString([a, b])) < 0.15 and rooms_union.boundary.distance(Point(a)) < 0.15 \
                    and rooms_union.boundary.distance(Point(b)) < 0.15:
                continue  # a face against a wall (or a hand's width off it) is not seen
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
    boundary: list[float] = []  # distance from the true outline (every cm) to the plan's
    for t in truth:
        e = max(est, key=lambda g: g.intersection(t).area)
        room_area_err = max(room_area_err, abs(e.area - t.area) / t.area)
        ring = LineString(t.exterior.coords)
        samples = [ring.interpolate(s) for s in np.arange(0, ring.length, 0.01)]
        d = [e.exterior.distance(q) for q in samples if not any(dd.contains(q) for dd in doors)]
        worst_wall = max(worst_wall, max(d))
        boundary += d
        v = [t.exterior.distance(Point(q)) for q in e.exterior.coords if not any(dd.contains(Point(q)) for dd in doors)]
        worst_vertex = max(worst_vertex, max(v))
    figures = {
        "case": label, "rooms": plan.room_count, "true_rooms": len(truth), "area_m2": round(plan.area_m2, 3),
        "true_area_m2": round(true_area, 3), "area_err_pct": round(100 * area_err, 2),
        "worst_room_area_err_pct": round(100 * room_area_err, 2),
        "wall_err_max_cm": round(100 * worst_wall, 2), "boundary_p95_cm": round(100 * float(np.percentile(boundary, 95)), 2),
        "vertex_err_max_cm": round(100 * worst_vertex, 2),
        "up_err_deg": round(up_err, 3), "floor_height_err_cm": round(100 * float(np.abs(floor_z[:, 2]).max()), 2),
        "ceiling_m": plan.ceiling_height_m and round(plan.ceiling_height_m, 3),
        "doors": len(plan.doors), "true_doors": len(apt.doors),
    }
    # each true doorway is one door of the plan, as wide, where it is
    true_doors = [tf(d) for d, _ in apt.doors]
    door_errs = []
    for t in true_doors:
        near = [Polygon(d.polygon) for d in plan.doors if Polygon(d.polygon).distance(t.centroid) < 0.05]
        width = max(np.ptp(np.asarray(t.exterior.coords), axis=0))
        door_errs.append(abs(max(np.ptp(np.asarray(near[0].exterior.coords), axis=0)) - width) if len(near) == 1 else np.inf)
    figures["door_width_err_max_cm"] = round(100 * max(door_errs, default=0.0), 2)
    print(json.dumps(figures))
    assert plan.room_count == len(truth), figures
    assert len(plan.doors) == len(apt.doors) and max(door_errs, default=0.0) < 0.03, figures
    assert area_err <= 0.02, figures
    assert room_area_err <= 0.02, figures
    assert np.percentile(boundary, 95) < 0.05, figures
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
    [(L_ROOM, (1.2, 1.5, 1.4), "l-shaped"), (TWO_ROOMS, (1.5, 1.5, 1.5), "two-rooms-doorway"), (FURNISHED, (2.5, 0.8, 1.3), "furnished"),
     (replace(FURNISHED, ceiling=False), (2.5, 0.8, 1.3), "furnished-no-ceiling"),
     (replace(TWO_ROOMS, ceiling=False), (1.5, 1.5, 1.5), "two-rooms-no-ceiling")],
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
    polys = list(doc.modelspace().query('LWPOLYLINE[layer=="ROOMS"]'))
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


def test_doorways_are_openings_in_svg_and_dxf() -> None:
    """The doorway of TWO_ROOMS is one door 0.9 m wide between the rooms: a white opening over the
    walls in the SVG, a gap in the DXF's WALLS lines and a passage on its DOORS layer."""
    import xml.etree.ElementTree as ET

    import ezdxf

    points, normals, T = scan(TWO_ROOMS, (1.5, 1.5, 1.5), seed=5)
    plan = extract_floorplan(points, normals)
    assert len(plan.doors) == 1
    door = Polygon(plan.doors[0].polygon)
    assert plan.doors[0].width_m == pytest.approx(0.9, abs=0.03)
    to_plan = np.linalg.inv(plan.plan_to_world) @ T
    centre = np.array([4.06, 1.65, 0.0]) @ to_plan[:3, :3].T + to_plan[:3, 3]
    assert door.distance(Point(centre[:2])) < 0.03
    for r in plan.rooms:  # the passage belongs to neither room
        assert Polygon(r.polygon).intersection(door).area < 0.02 * door.area

    svg = ET.fromstring(to_svg(plan, px_per_m=100.0))
    rects = [e for e in svg.iter("{http://www.w3.org/2000/svg}rect") if e.get("class") == "door"]
    assert len(rects) == 1 and rects[0].get("fill") == "white"
    w, h = float(rects[0].get("width")), float(rects[0].get("height"))
    assert max(w, h) == pytest.approx(100 * plan.doors[0].width_m, abs=1.0)  # the opening, not past the jambs
    assert min(w, h) > 100 * min(np.ptp(plan.doors[0].polygon, axis=0))  # across the wall and its strokes

    doc = ezdxf.read(io.StringIO(to_dxf(plan).decode()))
    msp = doc.modelspace()
    doors = [Polygon(list(e.vertices())) for e in msp.query('LWPOLYLINE[layer=="DOORS"]')]
    assert len(doors) == 1 and doors[0].equals_exact(door, 1e-6)
    gj_doors = to_geojson(plan)["spatialforge"]["doors"]
    assert len(gj_doors) == 1 and gj_doors[0]["width_m"] == pytest.approx(plan.doors[0].width_m, abs=1e-3)
    walls = [LineString(list(e.vertices())) for e in msp.query('LWPOLYLINE[layer=="WALLS"]')]
    assert walls and all(not w.intersects(door.buffer(-0.01)) for w in walls)
    # the walls go all round each room but across the opening: their length is the perimeters less it
    perimeter = sum(r.perimeter_m for r in plan.rooms)
    assert sum(w.length for w in walls) == pytest.approx(perimeter - 2 * plan.doors[0].width_m, abs=0.2)


def test_no_doors_in_a_room_without_one() -> None:
    points, normals, _ = scan(L_ROOM, (1.2, 1.5, 1.4), seed=2)
    plan = extract_floorplan(points, normals)
    assert plan.doors == ()
    assert 'class="door"' not in to_svg(plan)


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


# --- furnished rooms from rendered depth along an eye-height walk (issue 20 §2) ---------------------


def fuse_tour(room, *, ceiling_seen: bool = True) -> tuple[np.ndarray, np.ndarray | None, Apartment, np.ndarray]:
    """Exact depth of `room` (runner.synthetic) along `room_tour`, TSDF-fused by geometry/fusion.py
    in the first camera's frame: (points, normals, the room as an Apartment, apartment -> world).
    `ceiling_seen=False` drops every ceiling pixel, as a walk that never looks up."""
    from spatialforge.runner.geometry.fusion import fuse
    from spatialforge.runner.synthetic import PinholeCamera, render, room_tour

    camera = PinholeCamera(width=240, height=180, fx=165.0, fy=165.0)
    K = camera.K
    poses = room_tour(room)
    vs, us = np.mgrid[0:camera.height, 0:camera.width].astype(np.float64)
    rays = np.stack([(us - K[0, 2]) / K[0, 0], (vs - K[1, 2]) / K[1, 1], np.ones_like(us)], axis=-1)
    depths = []
    for T in poses:
        _, depth = render(room, camera, T, supersample=1)
        if not ceiling_seen:
            height = (rays * depth[..., None]) @ T[1, :3] + T[1, 3]  # room y of each pixel
            depth = np.where(height < room.lo[1] + 0.01, 0.0, depth).astype(np.float32)
        depths.append(depth)
    images = [np.full((camera.height, camera.width, 3), 128, np.uint8) for _ in poses]
    first = np.linalg.inv(poses[0])  # room -> first camera (the world frame)
    fused = fuse(images, depths, [first @ T for T in poses], K, voxel_size=0.02, depth_max=9.0)
    pcd = fused.point_cloud
    normals = pcd.point.normals.numpy() if "normals" in pcd.point else None
    (x0, _, z0), (x1, floor, z1) = room.lo, room.hi
    # apartment frame (z up, floor at 0): (x, z, floor - y) of the room's frame
    room_to_apt = np.array([[1.0, 0, 0, 0], [0, 0, 1, 0], [0, -1, 0, floor], [0, 0, 0, 1]])
    apt = Apartment(rooms=[box(x0, z0, x1, z1)], height=floor - room.lo[1])
    return fused.points, normals, apt, first @ np.linalg.inv(room_to_apt)


@pytest.mark.parametrize(
    ("scene", "ceiling_seen"),
    [("living_room", True), ("kitchen", True), ("bedroom", True), ("living_room", False), ("kitchen", False), ("bedroom", False)],
)
def test_furnished_rooms_fused(scene: str, ceiling_seen: bool) -> None:
    """Furniture against walls is floor: a 2.1 m wardrobe in a corner, a bookcase, a sofa; a counter
    under wall cabinets beside a fridge; a bed in a corner. With and without the ceiling seen."""
    from spatialforge.runner import synthetic

    points, normals, apt, apt_to_world = fuse_tour(getattr(synthetic, scene)(), ceiling_seen=ceiling_seen)
    plan = extract_floorplan(points, normals)
    check(plan, apt, apt_to_world, f"{scene}-fused{'' if ceiling_seen else '-no-ceiling'}")


def test_kitchen_cabinets_up_near_the_ceiling() -> None:
    """Wall cabinets up to 2.4 m hide the wall's top above the counter, and their fronts stand
    0.35 m out from it beside the fridge: the wall behind the counter stays a wall (floor on
    neither side of it) and the cabinet fronts do not stand in for the wall the fridge hides."""
    from spatialforge.runner import synthetic

    points, normals, apt, apt_to_world = fuse_tour(synthetic.kitchen(cabinet_top=2.4), ceiling_seen=False)
    check(extract_floorplan(points, normals), apt, apt_to_world, "kitchen-tall-cabinets-no-ceiling")
