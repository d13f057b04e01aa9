"""The floor plan's file formats: SVG (a drawing), DXF (for CAD) and GeoJSON (for GIS tools).

Each is a function of a FloorPlan (runner/geometry/floorplan.py), in plan metres.
"""

from __future__ import annotations

import io
from typing import TYPE_CHECKING

import numpy as np

if TYPE_CHECKING:
    from spatialforge.runner.geometry.floorplan import FloorPlan


def to_geojson(plan: FloorPlan) -> dict:
    """A FeatureCollection of room polygons in local plan metres (not WGS84); the doorways'
    passages under `spatialforge.doors`."""
    features = []
    for r in plan.rooms:
        ring = [[round(float(x), 4), round(float(y), 4)] for x, y in r.polygon]
        features.append({
            "type": "Feature",
            "id": r.index,
            "geometry": {"type": "Polygon", "coordinates": [ring + [ring[0]]]},
            "properties": {"name": r.name, "area_m2": round(r.area_m2, 3), "perimeter_m": round(r.perimeter_m, 3)},
        })
    return {
        "type": "FeatureCollection",
        "features": features,
        "spatialforge": {
            "units": "m",
            "frame": "plan: x along the main wall direction, y = up x x, origin on the floor below the first camera",
            "area_m2": round(plan.area_m2, 3),
            "room_count": plan.room_count,
            "doors": [
                {"polygon": [[round(float(x), 4), round(float(y), 4)] for x, y in d.polygon], "width_m": round(d.width_m, 3)}
                for d in plan.doors
            ],
            "ceiling_height_m": None if plan.ceiling_height_m is None else round(plan.ceiling_height_m, 3),
            "plan_to_world": np.round(plan.plan_to_world, 6).tolist(),
        },
    }


def to_svg(plan: FloorPlan, *, px_per_m: float = 100.0, margin_m: float = 0.5) -> str:
    """An SVG drawing: rooms filled, walls stroked, doorways as openings (`<rect class="door">`
    in white over the strokes), name and area per room, a 1 m scale bar."""
    from shapely.geometry import Polygon

    if plan.rooms:
        allp = np.vstack([r.polygon for r in plan.rooms])
        lo, hi = allp.min(axis=0) - margin_m, allp.max(axis=0) + margin_m
    else:
        lo, hi = np.array([-1.0, -1.0]), np.array([1.0, 1.0])
    w, h = (hi - lo) * px_per_m

    def xy(p: np.ndarray) -> str:  # SVG y grows downwards: flip
        return f"{(p[0] - lo[0]) * px_per_m:.1f},{(hi[1] - p[1]) * px_per_m:.1f}"

    palette = ["#e8f1fb", "#fdf2e3", "#e9f7ec", "#f6e8f7", "#fbfbe3", "#e6f6f6"]
    font = max(10.0, 0.18 * px_per_m)
    parts = [
        f'<svg xmlns="http://www.w3.org/2000/svg" width="{w:.0f}" height="{h:.0f}" viewBox="0 0 {w:.1f} {h:.1f}">',
        f"<title>Floor plan: {plan.room_count} rooms, {plan.area_m2:.2f} m²</title>",
        '<rect width="100%" height="100%" fill="white"/>',
    ]
    for r in plan.rooms:
        pts = " ".join(xy(p) for p in r.polygon)
        parts.append(
            f'<polygon points="{pts}" fill="{palette[r.index % len(palette)]}" stroke="#222" '
            f'stroke-width="{0.06 * px_per_m:.1f}" stroke-linejoin="miter"/>'
        )
        c = np.asarray(Polygon(r.polygon).representative_point().coords[0])
        x, y = (float(v) for v in xy(c).split(","))
        parts.append(
            f'<text x="{x:.1f}" y="{y:.1f}" font-family="sans-serif" font-size="{font:.0f}" '
            f'text-anchor="middle">{r.name}</text>'
        )
        parts.append(
            f'<text x="{x:.1f}" y="{y + 1.2 * font:.1f}" font-family="sans-serif" font-size="{font:.0f}" '
            f'text-anchor="middle">{r.area_m2:.2f} m²</text>'
        )
    for d in plan.doors:  # an opening: white over the walls' strokes, the jambs' strokes kept
        (x0, y0), (x1, y1) = d.polygon.min(axis=0), d.polygon.max(axis=0)
        pad = 0.04  # past the stroke's half width, across the wall only
        if x1 - x0 < y1 - y0:
            x0, x1 = x0 - pad, x1 + pad
        else:
            y0, y1 = y0 - pad, y1 + pad
        parts.append(
            f'<rect class="door" x="{(x0 - lo[0]) * px_per_m:.1f}" y="{(hi[1] - y1) * px_per_m:.1f}" '
            f'width="{(x1 - x0) * px_per_m:.1f}" height="{(y1 - y0) * px_per_m:.1f}" fill="white" stroke="none"/>'
        )
    bx, by = 0.2 * px_per_m, h - 0.2 * px_per_m
    parts.append(f'<line x1="{bx:.1f}" y1="{by:.1f}" x2="{bx + px_per_m:.1f}" y2="{by:.1f}" stroke="#222" stroke-width="3"/>')
    parts.append(f'<text x="{bx:.1f}" y="{by - 6:.1f}" font-family="sans-serif" font-size="{font:.0f}">1 m</text>')
    parts.append("</svg>")
    return "\n".join(parts) + "\n"


def to_dxf(plan: FloorPlan) -> bytes:
    """A DXF (R2010, metres): one closed polyline per room on ROOMS (its area), labels on LABELS,
    the room outlines with the doorways cut out on WALLS, and each door's passage on DOORS."""
    import ezdxf
    from ezdxf import units
    from ezdxf.enums import TextEntityAlignment
    from shapely.geometry import LineString, Polygon
    from shapely.ops import unary_union

    doc = ezdxf.new("R2010")
    doc.units = units.M
    doc.layers.add("ROOMS", color=7)
    doc.layers.add("LABELS", color=3)
    doc.layers.add("WALLS", color=7)
    doc.layers.add("DOORS", color=1)
    msp = doc.modelspace()
    for r in plan.rooms:
        msp.add_lwpolyline([(float(x), float(y)) for x, y in r.polygon], close=True, dxfattribs={"layer": "ROOMS"})
        c = Polygon(r.polygon).representative_point().coords[0]
        text = msp.add_text(f"{r.name}: {r.area_m2:.2f} m2", height=0.15, dxfattribs={"layer": "LABELS"})
        text.set_placement((float(c[0]), float(c[1])), align=TextEntityAlignment.MIDDLE_CENTER)
    openings = unary_union([Polygon(d.polygon).buffer(0.03, join_style="mitre") for d in plan.doors])
    for r in plan.rooms:
        walls = LineString(np.vstack([r.polygon, r.polygon[:1]])).difference(openings)
        for line in getattr(walls, "geoms", [walls]):
            if not line.is_empty:
                msp.add_lwpolyline([(float(x), float(y)) for x, y in line.coords], dxfattribs={"layer": "WALLS"})
    for d in plan.doors:
        msp.add_lwpolyline([(float(x), float(y)) for x, y in d.polygon], close=True, dxfattribs={"layer": "DOORS"})
    stream = io.StringIO()
    doc.write(stream)
    return stream.getvalue().encode("utf-8")
