"""POST /v1/measure of the depth server: depth for one photo, then runner/measure.py.

    POST /v1/measure   body: the image bytes. Query: name, from=X,Y and to=X,Y (pixels of the
                       photo as uploaded, upright), reference=a4|letter|credit_card with
                       box=X0,Y0,X1,Y1 (photo pixels), fx, fy, cx, cy (photo pixels).

Points and boxes are mapped to the depth map's pixels (`to_depth_pixels`); the focal length
is the request's (source `spec`), else the photo's EXIF, else the documented fallback, each
with its own uncertainty (`FOCAL_REL_SIGMA`). The answer is `Measurement.as_dict()` plus the
depth map's size and model. A relative (non-metric) checkpoint is refused: it has no metres.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np
from starlette.requests import Request
from starlette.responses import JSONResponse, Response

from spatialforge.runner.errors import MeasurementError
from spatialforge.runner.images import DecodedImage
from spatialforge.runner.measure import FocalEstimate, ReferenceObject, focal_from_exif, measure, to_depth_pixels


def _floats(value: str | None, n: int, field: str) -> tuple[float, ...] | None:
    if value is None or value == "":
        return None
    try:
        out = tuple(float(v) for v in value.split(","))
    except ValueError:
        out = ()
    if len(out) != n or not all(math.isfinite(v) for v in out):
        raise MeasurementError(f"{field}={value!r}: expected {n} comma-separated numbers")
    return out


def measure_params(request: Request) -> dict[str, Any]:
    """The query of a measure request; a missing or malformed field is a MeasurementError (422)."""
    q = request.query_params
    p1, p2 = _floats(q.get("from"), 2, "from"), _floats(q.get("to"), 2, "to")
    if p1 is None or p2 is None:
        raise MeasurementError("from=X,Y and to=X,Y are required (pixels of the photo)")
    reference, box = q.get("reference") or None, _floats(q.get("box"), 4, "box")
    if (reference is None) != (box is None):
        raise MeasurementError("reference and box go together: reference=a4|letter|credit_card&box=X0,Y0,X1,Y1")
    intrinsics = {k: v for k in ("fx", "fy", "cx", "cy") if (v := _floats(q.get(k), 1, k)) is not None}
    if intrinsics and "fx" not in intrinsics:
        raise MeasurementError("fy, cx and cy need fx")
    if intrinsics and intrinsics["fx"][0] <= 0:
        raise MeasurementError("fx must be positive")
    return {"name": q.get("name") or "upload", "from": p1, "to": p2, "reference": reference, "box": box,
            "intrinsics": {k: v[0] for k, v in intrinsics.items()}, "keep_bytes": True}


def focal_estimate(image: DecodedImage, data: bytes | None, k: dict[str, float], w: int, h: int) -> FocalEstimate:
    """The focal length in depth-map pixels: request, else EXIF, else the fallback."""
    if k.get("fx"):
        return FocalEstimate.from_source(k["fx"], "spec").scaled(w / image.width)
    if image.exif_focal_px and data is not None:
        exif = focal_from_exif(data, image.width, image.height)
        if exif is not None:
            return exif.scaled(w / image.width)
    return FocalEstimate.fallback(w, h)


def respond_measure(state: Any, image: DecodedImage, depth: np.ndarray, params: dict[str, Any],
                    data: bytes | None = None) -> Response:
    ckpt = state.estimator.checkpoint
    if not ckpt.metric:
        raise MeasurementError(f"measuring needs a metric depth model; this server runs {ckpt.name} (relative depth)")
    h, w = depth.shape
    size_in, size_out = (image.width, image.height), (w, h)
    p1, p2 = (to_depth_pixels(p, size_in, size_out) for p in (params["from"], params["to"]))
    k = params["intrinsics"]
    focal = focal_estimate(image, data, k, w, h)
    principal = None
    if "cx" in k and "cy" in k:
        principal = to_depth_pixels((k["cx"], k["cy"]), size_in, size_out)
    reference = None
    if params["reference"]:
        x0, y0, x1, y1 = params["box"]  # box edges, not pixel centres: they scale as they are
        sx, sy = w / image.width, h / image.height
        reference = ReferenceObject.named(params["reference"], (x0 * sx, y0 * sy, x1 * sx, y1 * sy))
    result = measure(depth, p1, p2, focal, principal_point=principal, reference=reference)
    body = result.as_dict()
    body.update({"model": ckpt.name, "width": w, "height": h, "input_width": image.width, "input_height": image.height,
                 "focal_source": result.focal.source, "focal_length_px": result.focal.focal_px})
    return JSONResponse(body)
