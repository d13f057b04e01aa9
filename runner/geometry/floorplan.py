"""Floor plans from fused geometry: floor plane, wall slice, rooms as polygons (written as
SVG, DXF and GeoJSON by floorplan_writers.py).

Input is a point cloud in the world frame of the first camera (OpenCV axes: x right, y down,
z forward), so "up" is found from the data:

1. **Up.** Dominant plane directions are clustered from the normals (estimated with open3d when
   not given). The vertical is the direction whose extent is a plausible storey height
   (1.8-5 m) and that is closest to the cameras' "up" (-y; the first camera's, or the mean over
   `camera_poses`); the sign comes from the camera too (footage is shot with the camera held
   within ~60 degrees of upright).
2. **Floor.** The lowest horizontal surface holding at least a quarter of the largest one's
   points; a least-squares plane through it fixes the vertical exactly. The ceiling is the
   highest such surface (when it is at least 1.8 m above the floor).
3. **Walls.** Vertical surfaces within +-5 cm of `slice_height` are rasterised at `resolution`.
   Furniture against walls is floor: a face is furniture (a wardrobe, a shelf, a fridge) when
   nothing of the same orientation shows just below the walls' top there (the ceiling, or
   where the vertical surfaces end when a walk at eye height saw little ceiling) and either
   the ceiling is seen on both sides of it (a wall has the ceiling on one side only) or its run
   of such faces is longer than a wall is thick and has a wall continuing above it, hidden at
   the slice, less than 0.8 m behind (behind: the side with no floor seen next to the face);
   that wall's upper part, in the piece's shadow and carried along its line across the patches
   the piece hides from eye height, then stands in for the part hidden at the slice. Gaps in
   wall lines up to 30 cm are closed along the plan axes (doorways are wider).
4. **Rooms.** Interior = floor and ceiling evidence minus walls, plus the enclosed pockets
   that touch the floor (furniture footprints); pockets bounded only by walls (the inside of
   a wall) are not interior, nor are strips under 20 cm wide. Rooms are split where the free
   space narrows (a doorway): a distance-transform watershed (by immersion) with markers at
   maxima of dynamic >= `min_prominence`.
5. **Polygons.** Each room's outline is traced, simplified (Douglas-Peucker, shapely) and every
   long edge is moved onto a line fitted to the wall points behind it, so walls land on the
   measured faces rather than on the grid.
6. **Doors.** Floor between two rooms' outlines, in no wall, 0.4-1.2 m wide and no deeper than a
   wall is thick, is a doorway (`FloorPlan.doors`); its ends sit on the jambs' points.

Plan coordinates: metres, origin below the first camera on the floor, x along the dominant
wall direction, y = up x x, z = height above the floor (`FloorPlan.plan_to_world` maps them
back to the world frame).
"""

from __future__ import annotations

from dataclasses import dataclass

import cv2
import numpy as np

from spatialforge.runner.errors import FloorPlanError

_WALL_BAND = 0.05  # half-height of the slice (m)
_TOP_BAND = (0.35, 0.08)  # "just below the ceiling": from ceiling-0.35 m to ceiling-0.08 m
_FLOOR_BAND = 0.04  # horizontal points within this of the floor/ceiling plane are evidence (m)
_WALL_GAP = 0.3  # gaps in a wall line up to this are closed (m); doorways are wider
_MIN_WIDTH = 0.2  # narrower strips of free space are not floor (m)
_SNAP_REACH = 0.1  # wall faces up to this far outside a traced outline pull its edge onto them (m)
_DOOR_MAX = 1.2  # wall openings up to this wide are doors: their passage belongs to no room (m)
_WALL_MAX_THICKNESS = 0.4  # (m)
_FURNITURE_DEPTH = 0.8  # a wall continuing above a topless face this far behind it makes the face furniture (m)
_STAND_IN_GAP = 1.0  # gaps up to this in the upper wall behind a piece are bridged (m)
_MAX_CELLS = 4000  # grid cells per axis (80 m at 2 cm)


@dataclass(frozen=True, kw_only=True)
class PlanRoom:
    """One room: a simple polygon in plan coordinates (metres, counter-clockwise, not closed)."""

    index: int
    polygon: np.ndarray  # (K, 2)
    area_m2: float

    @property
    def perimeter_m(self) -> float:
        d = np.diff(np.vstack([self.polygon, self.polygon[:1]]), axis=0)
        return float(np.hypot(d[:, 0], d[:, 1]).sum())

    @property
    def name(self) -> str:
        return f"Room {self.index + 1}"


@dataclass(frozen=True, kw_only=True)
class PlanDoor:
    """A doorway: the passage through the wall, a rectangle in plan coordinates (metres,
    counter-clockwise, not closed); the writers draw it as an opening in the walls."""

    polygon: np.ndarray  # (4, 2)

    @property
    def width_m(self) -> float:
        """The opening's width: the passage's longer side (its shorter one is the wall's thickness)."""
        d = np.diff(self.polygon[:3], axis=0)
        return float(np.hypot(d[:, 0], d[:, 1]).max())


@dataclass(frozen=True, kw_only=True)
class FloorPlan:
    """Rooms and doorways in plan coordinates and the transform back to the world frame."""

    rooms: tuple[PlanRoom, ...]
    doors: tuple[PlanDoor, ...] = ()
    plan_to_world: np.ndarray  # 4x4: plan (x, y, height above floor) -> world
    ceiling_height_m: float | None
    slice_height_m: float
    resolution_m: float

    @property
    def area_m2(self) -> float:
        return float(sum(r.area_m2 for r in self.rooms))

    @property
    def room_count(self) -> int:
        return len(self.rooms)

    @property
    def up(self) -> np.ndarray:
        """The floor normal in the world frame."""
        return self.plan_to_world[:3, 2].copy()

    def to_plan(self, points: np.ndarray) -> np.ndarray:
        """World points (N, 3) -> plan (x, y, height above floor)."""
        T = np.linalg.inv(self.plan_to_world)
        return np.asarray(points, dtype=np.float64) @ T[:3, :3].T + T[:3, 3]

    def summary(self) -> dict:
        """The figures for a manifest: floor area, room count, per-room areas, ceiling height."""
        return {
            "areaM2": round(self.area_m2, 3),
            "roomCount": self.room_count,
            "rooms": [{"name": r.name, "areaM2": round(r.area_m2, 3)} for r in self.rooms],
            "ceilingHeightM": None if self.ceiling_height_m is None else round(self.ceiling_height_m, 3),
        }


def extract_floorplan(
    points: np.ndarray,
    normals: np.ndarray | None = None,
    *,
    slice_height: float = 1.0,
    resolution: float = 0.02,
    min_room_area: float = 1.0,
    min_prominence: float = 0.2,
    camera_poses: list[np.ndarray | None] | None = None,
) -> FloorPlan:
    """Rooms of the storey seen in `points` (N x 3, metres, first camera's frame).

    `normals` (N x 3, any sign) are estimated when None. `min_prominence` (m): a room is kept
    apart from its neighbour when its widest point is at least this much wider (as a
    distance to the nearest wall) than the opening between them. `camera_poses` (camera-to-world
    4x4, OpenCV axes; None entries skipped), when given, tell up from their mean "up" instead of the first camera's
    alone (a walk that starts looking at the floor). Raises FloorPlanError.
    """
    pts = np.asarray(points, dtype=np.float64)
    if pts.ndim != 2 or pts.shape[1] != 3:
        raise FloorPlanError(f"points must be N x 3, got shape {pts.shape}")
    if normals is not None:
        nrm = np.asarray(normals, dtype=np.float64)
        if nrm.shape != pts.shape:
            raise FloorPlanError(f"normals must match points {pts.shape}, got {nrm.shape}")
    else:
        nrm = None
    if not 0.005 <= resolution <= 0.2:
        raise FloorPlanError(f"resolution must be 0.005-0.2 m, got {resolution}")
    pts, nrm = _prepare(pts, nrm, voxel=resolution)
    if len(pts) < 1000:
        raise FloorPlanError(f"too few points for a floor plan: {len(pts)}")

    up = _find_up(pts, nrm, _camera_up(camera_poses))
    floor_point, up, ceiling = _floor_and_ceiling(pts, nrm, up)
    if not 0.2 <= slice_height <= (ceiling - 0.15 if ceiling else 3.5):
        raise FloorPlanError(
            f"slice height {slice_height} m is not between 0.2 m and the ceiling ({ceiling or 3.65:.2f} m) - 0.15 m"
        )
    plan_to_world = _plan_frame(pts, nrm, up, floor_point)
    T = np.linalg.inv(plan_to_world)
    local = pts @ T[:3, :3].T + T[:3, 3]
    rooms, doors = _rooms(local, nrm @ T[:3, :3].T, ceiling=ceiling, slice_height=slice_height, res=resolution,
                          min_room_area=min_room_area, min_prominence=min_prominence)
    return FloorPlan(rooms=rooms, doors=doors, plan_to_world=plan_to_world, ceiling_height_m=ceiling,
                     slice_height_m=float(slice_height), resolution_m=float(resolution))


# --- steps -----------------------------------------------------------------------------------


def _prepare(pts: np.ndarray, nrm: np.ndarray | None, *, voxel: float) -> tuple[np.ndarray, np.ndarray]:
    """Finite points, voxel-averaged at the grid resolution; normals estimated if missing."""
    import open3d as o3d

    ok = np.isfinite(pts).all(axis=1)
    if nrm is not None:
        ok &= np.isfinite(nrm).all(axis=1) & (np.linalg.norm(nrm, axis=1) > 1e-9)
    pcd = o3d.geometry.PointCloud(o3d.utility.Vector3dVector(pts[ok]))
    if nrm is not None:
        n = nrm[ok]
        # voxel averaging must not cancel opposite-signed normals of one surface: fold to a hemisphere
        ref = np.array([0.5773, 0.5774, 0.5775])
        n = n / np.linalg.norm(n, axis=1, keepdims=True)
        n = np.where((n @ ref)[:, None] < 0, -n, n)
        pcd.normals = o3d.utility.Vector3dVector(n)
    pcd = pcd.voxel_down_sample(voxel)
    if nrm is None:
        pcd.estimate_normals(o3d.geometry.KDTreeSearchParamHybrid(radius=max(4 * voxel, 0.06), max_nn=30))
    out_p = np.asarray(pcd.points)
    out_n = np.asarray(pcd.normals)
    norm = np.linalg.norm(out_n, axis=1)
    keep = norm > 0.5
    return out_p[keep], out_n[keep] / norm[keep, None]


def _dominant_directions(nrm: np.ndarray, *, k: int = 3, cos_tol: float = np.cos(np.radians(12))) -> list[tuple[np.ndarray, float]]:
    """Up to k sign-free normal directions and the share of normals each holds (greedy, then refined)."""
    rng = np.random.default_rng(0)
    n = nrm if len(nrm) <= 20000 else nrm[rng.choice(len(nrm), 20000, replace=False)]
    remaining = np.ones(len(n), bool)
    found: list[tuple[np.ndarray, float]] = []
    for _ in range(k):
        idx = np.flatnonzero(remaining)
        if len(idx) < 50:
            break
        cand = n[rng.choice(idx, min(200, len(idx)), replace=False)]
        counts = (np.abs(n[idx] @ cand.T) > cos_tol).sum(axis=0)
        d = cand[int(np.argmax(counts))]
        for _ in range(3):  # refine: principal axis of the inliers
            inl = n[idx][np.abs(n[idx] @ d) > cos_tol]
            w, v = np.linalg.eigh(inl.T @ inl)
            d = v[:, -1]
        inl_mask = np.abs(n @ d) > cos_tol
        found.append((d, float((inl_mask & remaining).mean())))
        remaining &= ~inl_mask
    return found


def _camera_up(camera_poses: list[np.ndarray | None] | None) -> np.ndarray:
    """The cameras' mean "up" (-y in OpenCV axes) in the world frame: the first camera's alone
    when no poses are given. Over a walk, pitching up and down averages out."""
    poses = [np.asarray(T, dtype=np.float64) for T in camera_poses or () if T is not None]
    if not poses:
        return np.array([0.0, -1.0, 0.0])
    ups = np.array([-T[:3, 1] for T in poses])
    mean = ups.mean(axis=0)
    norm = float(np.linalg.norm(mean))
    return mean / norm if norm > 1e-6 else np.array([0.0, -1.0, 0.0])


def _find_up(pts: np.ndarray, nrm: np.ndarray, camera_up: np.ndarray) -> np.ndarray:
    dirs = [(d, share) for d, share in _dominant_directions(nrm) if share >= 0.05]
    if not dirs:
        raise FloorPlanError("no planar surfaces found (no floor, walls or ceiling)")

    def plausible(d: np.ndarray) -> bool:
        h = pts @ d
        lo, hi = np.percentile(h, [0.5, 99.5])
        return 1.8 <= hi - lo <= 5.0

    pool = [d for d, _ in dirs if plausible(d)] or [d for d, _ in dirs]
    d = max(pool, key=lambda v: abs(float(v @ camera_up)))
    if abs(float(d @ camera_up)) < 0.3:
        raise FloorPlanError("cannot tell up from down: the camera was held more than ~70 degrees from upright")
    return d if d @ camera_up > 0 else -d


def _floor_and_ceiling(pts: np.ndarray, nrm: np.ndarray, up: np.ndarray) -> tuple[np.ndarray, np.ndarray, float | None]:
    """A point on the floor plane, the refined up vector, and the ceiling height above the floor."""
    horiz = np.abs(nrm @ up) > np.cos(np.radians(20))
    if horiz.sum() < 200:
        raise FloorPlanError("no horizontal surface: the geometry shows no floor")
    h = pts[horiz] @ up
    bins = np.arange(h.min() - 0.02, h.max() + 0.03, 0.01)
    hist, edges = np.histogram(h, bins=bins)
    smooth = np.convolve(hist, np.ones(3), mode="same")
    significant = np.flatnonzero(smooth >= 0.25 * smooth.max())
    floor_h = 0.5 * (edges[significant[0]] + edges[significant[0] + 1])
    sel = pts[horiz][np.abs(h - floor_h) < _FLOOR_BAND]
    if len(sel) < 100:
        raise FloorPlanError("no floor plane found")
    centre = sel.mean(axis=0)
    _, _, vt = np.linalg.svd(sel - centre, full_matrices=False)
    normal = vt[2] if vt[2] @ up > 0 else -vt[2]
    if normal @ up < np.cos(np.radians(10)):
        raise FloorPlanError("the floor is not a plane")
    ceiling = None
    top_h = 0.5 * (edges[significant[-1]] + edges[significant[-1] + 1])
    if top_h - floor_h >= 1.8:
        top = pts[horiz][np.abs(h - top_h) < _FLOOR_BAND]
        ceiling = float(np.median((top - centre) @ normal))
    return centre, normal, ceiling


def _plan_frame(pts: np.ndarray, nrm: np.ndarray, up: np.ndarray, floor_point: np.ndarray) -> np.ndarray:
    """4x4 plan -> world: x along the dominant wall direction, z = up, origin below the camera."""
    a = np.cross(up, [1.0, 0.0, 0.0])
    if np.linalg.norm(a) < 0.3:
        a = np.cross(up, [0.0, 0.0, 1.0])
    a /= np.linalg.norm(a)
    b = np.cross(up, a)
    vert = np.abs(nrm @ up) < 0.3
    x_axis = a
    if vert.sum() >= 50:
        ang = np.arctan2(nrm[vert] @ b, nrm[vert] @ a)
        theta = np.angle(np.exp(4j * ang).sum()) / 4  # walls are mostly at right angles
        x_axis = np.cos(theta) * a + np.sin(theta) * b
    y_axis = np.cross(up, x_axis)
    origin = (floor_point @ up) * up  # the world origin (the first camera) dropped onto the floor
    T = np.eye(4)
    T[:3, 0], T[:3, 1], T[:3, 2], T[:3, 3] = x_axis, y_axis, up, origin
    return T


def _disk(radius_cells: int) -> np.ndarray:
    return cv2.getStructuringElement(cv2.MORPH_ELLIPSE, (2 * radius_cells + 1, 2 * radius_cells + 1))


def _rooms(
    local: np.ndarray, normals: np.ndarray, *, ceiling: float | None, slice_height: float, res: float,
    min_room_area: float, min_prominence: float,
) -> tuple[tuple[PlanRoom, ...], tuple[PlanDoor, ...]]:
    z = local[:, 2]
    n_up = np.abs(normals[:, 2])
    vertical = n_up < 0.3
    horizontal = n_up > np.cos(np.radians(20))
    in_slice = vertical & (np.abs(z - slice_height) <= _WALL_BAND)
    evidence = horizontal & (np.abs(z) <= _FLOOR_BAND)
    if ceiling is not None:
        evidence |= horizontal & (np.abs(z - ceiling) <= _FLOOR_BAND)
    if in_slice.sum() < 50:
        raise FloorPlanError(f"no walls at the slice height ({slice_height} m above the floor)")
    if evidence.sum() < 100:
        raise FloorPlanError("no floor points")

    xy_all = local[in_slice | evidence, :2]
    lo = np.percentile(xy_all, 0.05, axis=0) - 12 * res
    hi = np.percentile(xy_all, 99.95, axis=0) + 12 * res
    shape = np.ceil((hi - lo) / res).astype(int)[::-1]  # rows = y, cols = x
    if (shape > _MAX_CELLS).any():
        raise FloorPlanError(f"the scene spans {(hi - lo).round(1).tolist()} m; at most {_MAX_CELLS * res:.0f} m per side")

    def raster(mask: np.ndarray, min_count: int = 1) -> np.ndarray:
        ij = np.floor((local[mask, :2] - lo) / res).astype(int)
        ok = (ij >= 0).all(axis=1) & (ij[:, 0] < shape[1]) & (ij[:, 1] < shape[0])
        grid = np.zeros(shape, np.int32)
        np.add.at(grid, (ij[ok, 1], ij[ok, 0]), 1)
        return grid >= min_count

    floor_ev = cv2.morphologyEx(raster(evidence).astype(np.uint8), cv2.MORPH_CLOSE, _disk(2)).astype(bool)
    top = ceiling if ceiling is not None else _wall_top(z[vertical])
    wall_points_mask = in_slice
    if top is not None and top - slice_height >= 0.6:
        furniture, wall_above, stand_in = _furniture_faces(
            local, normals, in_slice=in_slice, vertical=vertical, horizontal=horizontal, ceiling=ceiling, top=top,
            floor_ev=floor_ev, raster=raster, lo=lo, shape=shape, res=res)
        wall_points_mask = (in_slice & ~furniture) | wall_above
    else:
        stand_in = np.zeros(tuple(shape), bool)
    wall = cv2.dilate((raster(wall_points_mask, 2) | stand_in).astype(np.uint8), _disk(1))
    # bridge gaps in wall lines (unseen or badly fused stretches) up to _WALL_GAP: the plan is
    # aligned with the main wall direction, so closing along x and y fills them without
    # rounding corners; doorways are wider and stay open
    span = max(3, int(round(_WALL_GAP / res)) | 1)
    wall = (cv2.morphologyEx(wall, cv2.MORPH_CLOSE, np.ones((1, span), np.uint8))
            | cv2.morphologyEx(wall, cv2.MORPH_CLOSE, np.ones((span, 1), np.uint8))).astype(bool)

    passages = _doorways(wall, floor_ev, res)
    interior = _interior(floor_ev, wall, res) & ~passages
    labels = _split_rooms(interior, res=res, min_prominence=min_prominence, min_cells=int(min_room_area / res**2))
    wall_xy = local[wall_points_mask, :2]
    rooms = []
    for lab in range(1, labels.max() + 1):
        poly = _polygon(labels == lab, lo=lo, res=res, wall_xy=wall_xy)
        if poly is None or poly.area < min_room_area:
            continue
        coords = np.asarray(poly.exterior.coords)[:-1]
        rooms.append((coords, float(poly.area)))
    if not rooms:
        raise FloorPlanError("no enclosed room of at least %.1f m2 at the slice height" % min_room_area)
    rooms.sort(key=lambda r: -r[1])
    drawn = np.zeros(labels.shape, np.int32)  # the rooms' polygons, rasterised: doorways lie between them
    for i, (c, _a) in enumerate(rooms, start=1):
        cv2.fillPoly(drawn, [np.round(((c - lo) / res - 0.5) * 16).astype(np.int32)], i, shift=4)
    return (tuple(PlanRoom(index=i, polygon=c, area_m2=a) for i, (c, a) in enumerate(rooms)),
            _doors(floor_ev & ~wall & (drawn == 0), drawn, [c for c, _a in rooms], wall_xy, lo=lo, res=res))


def _jambs_onto_points(lo_hi: np.ndarray, along: int, wall_xy: np.ndarray, *, res: float) -> None:
    """Move a passage's ends (`lo_hi[:, along]`, in place) onto the jamb faces' points: the raster
    ends a cell or two short of them."""
    across = 1 - along
    p = wall_xy[(wall_xy[:, across] > lo_hi[0, across] + res) & (wall_xy[:, across] < lo_hi[1, across] - res)]
    for end, sign in ((0, -1.0), (1, 1.0)):
        edge = lo_hi[end, along]
        near = p[(sign * (p[:, along] - edge) >= -res) & (sign * (p[:, along] - edge) <= 4 * res), along]
        if len(near) >= 5:
            lo_hi[end, along] = float(np.median(near))


def _doors(free: np.ndarray, labels: np.ndarray, outlines: list[np.ndarray], wall_xy: np.ndarray, *,
           lo: np.ndarray, res: float) -> tuple[PlanDoor, ...]:
    """Doorways: floor in no room and in no wall (`free`), no deeper than a wall is thick, 0.4 m
    to _DOOR_MAX wide, between two rooms; each a rectangle (the plan is aligned with the walls)."""
    from shapely.geometry import Polygon, box
    from shapely.ops import unary_union

    free = cv2.morphologyEx(free.astype(np.uint8), cv2.MORPH_OPEN, np.ones((3, 3), np.uint8))  # no slivers
    n, lab, stats, _ = cv2.connectedComponentsWithStats(free, connectivity=4)
    rooms = unary_union([Polygon(c) for c in outlines])
    doors = []
    for k in range(1, n):
        x, y, bw, bh, _area = stats[k]
        depth, width = sorted((bw * res, bh * res))
        if depth > _WALL_MAX_THICKNESS + 2 * res or not 0.4 <= width <= _DOOR_MAX + 2 * res:
            continue
        ring = cv2.dilate((lab == k).astype(np.uint8), _disk(2)).astype(bool)
        if len(set(np.unique(labels[ring]).tolist()) - {0}) < 2:
            continue  # leads to no room on one side (a room below min_room_area, an unscanned space)
        # a cell more at the jambs (the walls' raster is dilated by one); across the wall, from
        # one room's outline to the other's
        grow = np.array([1, 3]) if bw > bh else np.array([3, 1])
        (x0, y0), (x1, y1) = lo + (np.array([x, y]) - grow) * res, lo + (np.array([x + bw, y + bh]) + grow) * res
        passage = box(x0, y0, x1, y1).difference(rooms)
        if passage.is_empty:
            continue
        if passage.geom_type != "Polygon":
            passage = max(passage.geoms, key=lambda g: g.area)
        lo_hi = np.array(passage.bounds).reshape(2, 2)  # [[x0, y0], [x1, y1]]
        along = 0 if bw > bh else 1
        _jambs_onto_points(lo_hi, along, wall_xy, res=res)
        (x0, y0), (x1, y1) = lo_hi
        doors.append(PlanDoor(polygon=np.array([[x0, y0], [x1, y0], [x1, y1], [x0, y1]])))
    return tuple(doors)


def _wall_top(z_vertical: np.ndarray) -> float | None:
    """Where the walls end (m above the floor) when the ceiling was not seen: walls run up to the
    ceiling, furniture stops below it, so the top of the vertical surfaces is the walls' top."""
    if len(z_vertical) < 100:
        return None
    return float(np.percentile(z_vertical, 99.5))


def _furniture_faces(
    local: np.ndarray, normals: np.ndarray, *, in_slice: np.ndarray, vertical: np.ndarray, horizontal: np.ndarray,
    ceiling: float | None, top: float, floor_ev: np.ndarray, raster, lo: np.ndarray, shape: np.ndarray, res: float,
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Masks of the points that are furniture faces in the slice (a wardrobe, a shelf, a fridge),
    not walls (their footprint is floor), and of the upper wall points behind them that stand in
    for the wall the piece hides at the slice; and those stand-in walls as grid cells.

    A face is furniture when nothing of the same orientation shows just below the walls' top
    (`top`: the ceiling, or where the walls end when the ceiling was not seen) at its place, and
    either the ceiling is seen on both sides of it (a wall has the ceiling on one side only) or,
    with or without a ceiling, a run of such faces longer than a wall is thick has a wall of the
    same orientation continuing above it less than `_FURNITURE_DEPTH` behind (the wall the piece
    stands against, hidden at the slice; a door jamb is no longer than the wall is thick). Behind
    is the side with no floor seen next to the face, the other side showing floor.
    """
    z = local[:, 2]
    near_top = vertical & (z >= top - _TOP_BAND[0]) & (z <= top - _TOP_BAND[1])
    # per wall orientation (8 bins over 180 degrees): the side of a shelf next to a wall
    # must not borrow the wall's upper part
    bins = (np.floor(np.mod(np.arctan2(normals[:, 1], normals[:, 0]), np.pi) / (np.pi / 8) + 0.5) % 8).astype(int)
    tops_raw = [raster(near_top & (bins == b), 2).astype(np.uint8) for b in range(8)]
    tops = [cv2.dilate(t, _disk(3)).astype(bool) for t in tops_raw]

    def at(grid: np.ndarray, xy: np.ndarray) -> np.ndarray:
        ij = np.floor((xy - lo) / res).astype(int)
        inside = (ij >= 0).all(axis=1) & (ij[:, 0] < shape[1]) & (ij[:, 1] < shape[0])
        ij = np.clip(ij, 0, [shape[1] - 1, shape[0] - 1])
        return grid[ij[:, 1], ij[:, 0]] & inside

    idx = np.flatnonzero(in_slice)
    xy = local[idx, :2]
    unit = normals[idx, :2] / np.maximum(np.linalg.norm(normals[idx, :2], axis=1, keepdims=True), 1e-9)
    b_pt = bins[idx]
    has_top = np.zeros(len(idx), bool)
    # per face point: the nearest wall of its orientation above, behind it (its distance, and
    # whether that wall is also seen at the slice: then it is a thin wall's far face)
    hit_d = np.full(len(idx), np.inf)
    hit_seen = np.zeros(len(idx), bool)
    side = np.zeros(len(idx))  # +1 or -1: the way from the face into the piece (no floor there); 0: unknown
    steps = np.arange(3 * res, _FURNITURE_DEPTH + res / 2, res)
    for b in range(8):
        sel = np.abs((b_pt - b + 4) % 8 - 4) <= 1  # this point's orientation bin or a neighbour
        has_top[sel] |= at(tops[b], xy[sel])
        t = tops_raw[b].astype(bool)
        seen = cv2.dilate(raster(in_slice & (bins == b), 2).astype(np.uint8), _disk(1)).astype(bool)
        for sign in (1.0, -1.0):
            own = np.flatnonzero(b_pt == b)
            # the piece's side: no floor seen just behind the face, floor just in front of it (a
            # wall behind a counter, with wall cabinets in front of its top, has floor on neither)
            ahead = lambda k: at(floor_ev, xy[own] + sign * k * res * unit[own])  # noqa: E731
            front = np.any([ahead(-k) for k in range(2, 7)], axis=0)
            back = np.any([ahead(k) for k in range(2, 5)], axis=0)
            own = own[front & ~back]
            side[own] = sign
            for d in steps:
                if not len(own):
                    break
                q = xy[own] + sign * d * unit[own]
                h = at(t, q)
                hit_d[own[h]], hit_seen[own[h]] = d, at(seen, q[h])
                own = own[~h]
    behind = (hit_d <= _FURNITURE_DEPTH) & ~hit_seen  # a wall continues above, hidden at the slice
    furniture = np.zeros(len(idx), bool)
    if ceiling is not None:
        ceil_ev = cv2.morphologyEx(raster(horizontal & (np.abs(z - ceiling) <= _FLOOR_BAND)).astype(np.uint8),
                                   cv2.MORPH_CLOSE, _disk(2))
        ceil_ev = cv2.dilate(ceil_ev, _disk(1)).astype(bool)  # looked up 3 cells off the face
        n2 = unit * (3 * res)
        furniture |= ~has_top & at(ceil_ev, xy + n2) & at(ceil_ev, xy - n2)
    # runs of topless faces: a piece's front and sides together
    topless = np.zeros(len(in_slice), bool)
    topless[idx[~has_top]] = True
    runs = cv2.dilate(raster(topless).astype(np.uint8), _disk(1))
    n, lab, stats, _ = cv2.connectedComponentsWithStats(runs, connectivity=8)
    ij = np.clip(np.floor((xy - lo) / res).astype(int), 0, [shape[1] - 1, shape[0] - 1])
    lab_pt = lab[ij[:, 1], ij[:, 0]]
    evidence = np.bincount(lab_pt[~has_top & behind], minlength=n)
    total = np.bincount(lab_pt[~has_top], minlength=n)
    long_enough = np.maximum(stats[:, cv2.CC_STAT_WIDTH], stats[:, cv2.CC_STAT_HEIGHT]) * res > _WALL_MAX_THICKNESS
    piece = long_enough & (evidence >= 0.2 * np.maximum(total, 1)) & (evidence >= 10)
    piece[0] = False
    against_wall = ~has_top & piece[lab_pt]
    furniture |= against_wall
    out = np.zeros(len(in_slice), bool)
    out[idx[furniture]] = True
    # the walls such a piece hides at the slice (behind it, beside it in a corner): their upper
    # part in the piece's shadow (swept from its faces into it, _FURNITURE_DEPTH deep) stands in
    # for them; wall cabinets beside a fridge are not in its shadow
    sweep = np.flatnonzero(against_wall & (side != 0))
    shadow = np.zeros(shape, np.uint8)
    for d in steps:
        cells = np.floor((xy[sweep] + (side[sweep] * d)[:, None] * unit[sweep] - lo) / res).astype(int)
        cells = cells[(cells >= 0).all(axis=1) & (cells[:, 0] < shape[1]) & (cells[:, 1] < shape[0])]
        shadow[cells[:, 1], cells[:, 0]] = 1
    in_shadow = cv2.dilate(shadow, _disk(3)).astype(bool)
    wall_above = near_top & at(in_shadow, local[:, :2])
    # and along those walls past the piece's end, up to a gap's width (a slot beside a wardrobe)
    span = round(_WALL_GAP / res) * 2 + 1
    beside = near_top & ~wall_above & at(cv2.dilate(shadow, _disk(span // 2)).astype(bool), local[:, :2])
    for b, kernel in ((0, np.ones((span, 1), np.uint8)), (4, np.ones((1, span), np.uint8))):  # walls along y, x
        same = np.abs((bins - b + 4) % 8 - 4) <= 1
        seeds = wall_above & same & at(shadow.astype(bool), local[:, :2])  # in the shadow proper
        line = cv2.dilate(raster(seeds, 3).astype(np.uint8), kernel).astype(bool)
        wall_above |= beside & same & at(line, local[:, :2])
    # the upper wall behind a tall piece is seen in patches (the piece hides its lower band from a
    # walk at eye height): bridge them along the plan axes across the piece's shadow
    bridge = round(_STAND_IN_GAP / res) | 1
    stand_in = raster(wall_above)
    for b, axis in ((0, 1), (4, 0)):  # walls along y (columns), along x (rows)
        own = raster(wall_above & (np.abs((bins - b + 4) % 8 - 4) <= 1))
        # a line of this orientation, 20 cm or more of it, is carried on to any stand-in cell
        # (its corner with the next wall) within _STAND_IN_GAP along it, in its own rows/columns
        kernel = np.ones((bridge, 1) if axis == 1 else (1, bridge), np.uint8)
        n, lab, stats, _ = cv2.connectedComponentsWithStats(
            cv2.dilate(own.astype(np.uint8), np.ones((5, 3) if axis == 1 else (3, 5), np.uint8)), connectivity=8)
        extent = stats[:, cv2.CC_STAT_HEIGHT if axis == 1 else cv2.CC_STAT_WIDTH] * res
        long_line = own & (extent >= 0.2)[lab] & (lab > 0)
        if not long_line.any():
            continue
        lines = long_line.any(axis=1 - axis)  # the columns (axis 1) or rows (axis 0) they occupy
        lines = np.convolve(lines, np.ones(3), mode="same") > 0
        band = lines[None, :] if axis == 1 else lines[:, None]
        seeds = ((long_line | stand_in) & band).astype(np.uint8)
        stand_in |= cv2.morphologyEx(seeds, cv2.MORPH_CLOSE, kernel).astype(bool) & band & in_shadow
    return out, wall_above, stand_in


def _interior(floor_ev: np.ndarray, wall: np.ndarray, res: float) -> np.ndarray:
    """Floor evidence minus walls, plus enclosed pockets that touch the floor (furniture footprints)."""
    interior = floor_ev & ~wall
    solid = (floor_ev | wall).astype(np.uint8)
    n, lab, stats, _ = cv2.connectedComponentsWithStats(1 - solid, connectivity=4)
    h, w = solid.shape
    for k in range(1, n):
        x, y, bw, bh, area = stats[k]
        if x == 0 or y == 0 or x + bw >= w or y + bh >= h:
            continue  # touches the border: outside
        sub = (lab[y - 1:y + bh + 1, x - 1:x + bw + 1] == k).astype(np.uint8)
        ring = cv2.dilate(sub, _disk(1)).astype(bool) & ~sub.astype(bool)
        touching = interior[y - 1:y + bh + 1, x - 1:x + bw + 1][ring].mean()
        if touching >= 0.2:
            interior[y - 1:y + bh + 1, x - 1:x + bw + 1] |= sub.astype(bool)
    # strips narrower than _MIN_WIDTH are not floor space: the inside of a thin wall whose
    # footprint the fused floor runs under, slivers along wall faces
    # (kept: cells in a run of at least _MIN_WIDTH along x and along y; unlike a disk, this
    # leaves square corners square)
    span = max(3, int(round(_MIN_WIDTH / res)))
    inside = interior.astype(np.uint8)
    along_x = cv2.morphologyEx(inside, cv2.MORPH_OPEN, np.ones((1, span), np.uint8))
    along_y = cv2.morphologyEx(inside, cv2.MORPH_OPEN, np.ones((span, 1), np.uint8))
    return (along_x & along_y).astype(bool)


def _doorways(wall: np.ndarray, floor_ev: np.ndarray, res: float) -> np.ndarray:
    """Door passages: gaps up to _DOOR_MAX in a wall line, no deeper than a wall is thick, with
    floor on both sides. Taking them out of the interior ends each room at its wall face."""
    span = int(round(_DOOR_MAX / res)) | 1
    thick = int(round(_WALL_MAX_THICKNESS / res))
    reach = int(round(0.3 / res))
    out = np.zeros(wall.shape, bool)
    w8 = wall.astype(np.uint8)
    for across in (1, 0):  # 1: gaps along y in walls running along y (the passage is crossed along x)
        se = np.ones((span, 1), np.uint8) if across == 1 else np.ones((1, span), np.uint8)
        gap = cv2.morphologyEx(w8, cv2.MORPH_CLOSE, se).astype(bool) & ~wall
        n, lab, stats, _ = cv2.connectedComponentsWithStats(gap.astype(np.uint8), connectivity=4)
        for k in range(1, n):
            x, y, bw, bh, _area = stats[k]
            depth, width = (bw, bh) if across == 1 else (bh, bw)
            if depth > thick or depth < 3 or width * res < 0.4:
                continue
            # a door is set in a wall: the wall goes on past both jambs in the passage's band
            # (a narrow corridor's walls, crossed by a fill, are only a wall's thickness)
            if across == 1:
                ends = (wall[max(0, y - reach):y, x:x + bw], wall[y + bh:y + bh + reach, x:x + bw])
            else:
                ends = (wall[y:y + bh, max(0, x - reach):x], wall[y:y + bh, x + bw:x + bw + reach])
            if min(e.mean() if e.size else 0.0 for e in ends) < 0.8:
                continue
            m = lab[y:y + bh, x:x + bw] == k
            # floor on both sides of the passage, just beyond its depth
            if across == 1:
                before = floor_ev[y:y + bh, max(0, x - 3):x].any()
                after = floor_ev[y:y + bh, x + bw:x + bw + 3].any()
            else:
                before = floor_ev[max(0, y - 3):y, x:x + bw].any()
                after = floor_ev[y + bh:y + bh + 3, x:x + bw].any()
            if before and after:
                out[y:y + bh, x:x + bw] |= m
    return out


def _split_rooms(interior: np.ndarray, *, res: float, min_prominence: float, min_cells: int) -> np.ndarray:
    """Label image of rooms: distance-transform watershed with h-maxima markers."""
    inside = interior.astype(np.uint8)
    dt = cv2.distanceTransform(inside, cv2.DIST_L2, cv2.DIST_MASK_PRECISE).astype(np.float32) * res
    # markers: regional maxima of the h-maxima transform (dt - h reconstructed under dt), i.e.
    # one per maximum of dynamic >= h; equal bumps along one corridor share one plateau
    h = np.float32(min_prominence)
    kernel = np.ones((3, 3), np.uint8)
    hmax = _reconstruct(np.maximum(dt - h, 0), dt)
    eps = np.float32(1e-4)
    tops = ((hmax - _reconstruct(np.maximum(hmax - eps, 0), hmax)) > eps / 2) & interior
    n, markers = cv2.connectedComponents(tops.astype(np.uint8), connectivity=8)
    # components of the interior with no marker (too narrow for any dome) get one anyway
    n_cc, cc = cv2.connectedComponents(inside, connectivity=4)
    for k in range(1, n_cc):
        comp = cc == k
        if not (markers[comp] > 0).any() and comp.sum() >= min_cells:
            markers[comp & (dt >= dt[comp].max() - 1e-6)] = n
            n += 1
    if n <= 1:
        return np.zeros(interior.shape, np.int32)
    labels = _flood(markers.astype(np.int32), dt, interior, step=res)
    # merge rooms smaller than min_cells into the neighbour sharing the longest border
    for lab in range(1, labels.max() + 1):
        m = labels == lab
        if 0 < m.sum() < min_cells:
            ring = cv2.dilate(m.astype(np.uint8), kernel).astype(bool) & ~m
            nb = labels[ring]
            nb = nb[(nb > 0) & (nb != lab)]
            labels[m] = np.bincount(nb).argmax() if len(nb) else 0
    # renumber 1..K
    uniq = [u for u in np.unique(labels) if u > 0]
    out = np.zeros_like(labels)
    for i, u in enumerate(uniq, start=1):
        out[labels == u] = i
    return out


def _reconstruct(marker: np.ndarray, mask: np.ndarray) -> np.ndarray:
    """Grey-scale reconstruction by dilation of `marker` under `mask` (8-connected)."""
    kernel = np.ones((3, 3), np.uint8)
    rec = np.minimum(marker, mask)
    while True:
        nxt = np.minimum(cv2.dilate(rec, kernel), mask)
        if np.array_equal(nxt, rec):
            return rec
        rec = nxt


def _flood(labels: np.ndarray, dt: np.ndarray, interior: np.ndarray, *, step: float) -> np.ndarray:
    """Watershed by immersion on the distance transform: grow the markers level by level, from
    the widest places down to the walls, each level by geodesic dilation within it."""
    kernel = np.ones((3, 3), np.uint8)
    labels = labels.copy()
    for level in np.arange(float(dt.max()), -step, -step):
        allowed = interior & (dt >= level) & (labels == 0)
        while allowed.any():
            grown = cv2.dilate(labels.astype(np.float32), kernel).astype(np.int32)
            take = allowed & (grown > 0)
            if not take.any():
                break
            labels[take] = grown[take]
            allowed &= ~take
    return labels


def _polygon(mask: np.ndarray, *, lo: np.ndarray, res: float, wall_xy: np.ndarray):
    """The room's outline in plan metres: traced, simplified, edges snapped onto wall points."""
    from shapely.geometry import Polygon
    from shapely.geometry.polygon import orient

    contours, _ = cv2.findContours(mask.astype(np.uint8), cv2.RETR_EXTERNAL, cv2.CHAIN_APPROX_NONE)
    if not contours:
        return None
    c = max(contours, key=cv2.contourArea)[:, 0, :].astype(np.float64)
    if len(c) < 4:
        return None
    xy = lo + (c + 0.5) * res
    poly = Polygon(xy).buffer(res / 2, join_style="mitre")  # the contour runs through cell centres
    if poly.geom_type != "Polygon":
        poly = max(poly.geoms, key=lambda g: g.area)
    poly = orient(poly.simplify(max(3 * res, 0.04), preserve_topology=True), 1.0)
    snapped = _snap_to_walls(np.asarray(poly.exterior.coords)[:-1], wall_xy, res=res)
    if snapped is not None:
        cand = orient(Polygon(snapped).simplify(0.005), 1.0)
        if cand.is_valid and abs(cand.area - poly.area) < 0.1 * poly.area:
            poly = cand
    return poly


def _snap_to_walls(v: np.ndarray, wall_xy: np.ndarray, *, res: float) -> np.ndarray | None:
    """Move each long edge onto the line fitted to the wall face behind it; corners = intersections."""
    n = len(v)
    if n < 3 or len(wall_xy) == 0:
        return None
    lines: list[tuple[np.ndarray, np.ndarray] | None] = []
    for i in range(n):
        a, b = v[i], v[(i + 1) % n]
        t = b - a
        length = float(np.linalg.norm(t))
        if length < 0.25:
            lines.append(None)
            continue
        t /= length
        out = np.array([t[1], -t[0]])  # outward normal of a counter-clockwise ring
        rel = wall_xy - a
        along, off = rel @ t, rel @ out
        near = (along > 0.1 * length) & (along < 0.9 * length) & (off > -2 * res) & (off < _SNAP_REACH)
        if near.sum() < 10:
            lines.append(None)
            continue
        # the nearest face: the first well-filled 1 cm bin (a thin wall's far face is further out)
        hist, edges = np.histogram(off[near], bins=np.arange(-2 * res, _SNAP_REACH + 0.01, 0.01))
        first = int(np.flatnonzero(hist >= 0.3 * hist.max())[0])
        centre_off = float(np.median(off[near][(off[near] >= edges[first]) & (off[near] < edges[first + 1])]))
        sel = wall_xy[near & (np.abs(off - centre_off) < 0.015)]
        if len(sel) < 10:
            lines.append(None)
            continue
        centre = sel.mean(axis=0)
        _, _, vt = np.linalg.svd(sel - centre, full_matrices=False)
        d = vt[0] if vt[0] @ t > 0 else -vt[0]
        if d @ t < np.cos(np.radians(8)):
            lines.append(None)
            continue
        lines.append((centre, d))
    refined = [i for i, line in enumerate(lines) if line is not None]
    if not refined:
        return None
    out: list[np.ndarray] = []
    for j, a in enumerate(refined):
        b = refined[(j + 1) % len(refined)]
        la, lb = lines[a], lines[b]
        run = [(a + 1 + k) % n for k in range((b - a - 1) % n + 1)]  # vertices from the end of edge a to the start of edge b
        run_len = sum(float(np.linalg.norm(v[(k + 1) % n] - v[k])) for k in run[:-1])
        cross = abs(float(la[1][0] * lb[1][1] - la[1][1] * lb[1][0]))
        if run_len < 0.6 and cross > 0.5:  # a corner, chamfered by the raster: rebuild it
            p = _intersect(la, lb)
            if max(float(np.linalg.norm(p - v[k])) for k in run) < 0.45:
                out.append(p)
                continue
        if len(run) == 1 and cross <= 0.5:  # two nearly parallel refined edges meet
            out.append(0.5 * (_project(v[run[0]], la) + _project(v[run[0]], lb)))
            continue
        first, last = _project(v[run[0]], la), _project(v[run[-1]], lb)
        out.append(first if np.linalg.norm(first - v[run[0]]) < 0.15 else v[run[0]])
        same_line = cross < 0.1 and abs(float((lb[0] - la[0]) @ np.array([-la[1][1], la[1][0]]))) < 0.03
        if not (same_line and run_len < _DOOR_MAX + 0.3):  # a door in one wall: straight across it
            out.extend(v[k] for k in run[1:-1])
        if len(run) > 1:
            out.append(last if np.linalg.norm(last - v[run[-1]]) < 0.15 else v[run[-1]])
    return np.asarray(out) if len(out) >= 3 else None


def _project(p: np.ndarray, line: tuple[np.ndarray, np.ndarray]) -> np.ndarray:
    c, d = line
    return c + ((p - c) @ d) * d


def _intersect(l1: tuple[np.ndarray, np.ndarray], l2: tuple[np.ndarray, np.ndarray]) -> np.ndarray:
    (p, d), (q, e) = l1, l2
    s = np.linalg.solve(np.column_stack([d, -e]), q - p)
    return p + s[0] * d
