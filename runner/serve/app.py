"""The depth server: one model, loaded once, behind a dynamic batcher (Starlette app).

    POST /v1/depth   body: the image bytes. Query: name (used in error messages), format
                     (json | png | preview | npy | float16; else from Accept, see
                     spatialforge/depth_formats.py; 406 when none fits), preview=0 (JSON without the
                     preview), fx, fy, cx, cy (intrinsics in input pixels, else EXIF, else
                     0.9 x the longer side).
    POST /v1/measure body: the image bytes; depth, then runner/measure.py (serve/measure.py)
    POST /v1/batches a small DepthBatch handed over by the operator (serve/batches.py)
    GET  /healthz    alive (also while the model loads)                        (serve/probes.py)
    GET  /readyz     200 once the model is loaded and one warm-up batch has run; else 503
    GET  /metrics    Prometheus

Decoding and validation are the batch runner's (runner/images.py, the DepthBatch defaults for
the limits), so a bad image gets the same reason as in a DepthBatch (HTTP 422, 413 when too
large). A full queue answers 503 with Retry-After. Never a traceback to the client. The
request pipeline is serve/handler.py, start-up and shut-down serve/lifecycle.py, the state
between requests serve/state.py; this module holds the depth route's query and answer.
"""

from __future__ import annotations

import base64
import json
from collections.abc import Callable
from typing import Any

import numpy as np
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from spatialforge import depth_formats
from spatialforge.crds.pool import BATCHES_PATH
from spatialforge.crds.v1alpha1.common import Intrinsics
from spatialforge.crds.v1alpha1.depthbatch import DepthBatchSpec
from spatialforge.runner.images import DecodedImage
from spatialforge.runner.preview import encode_preview
from spatialforge.runner.serve import encoding, lifecycle, probes
from spatialforge.runner.serve.batches import batches
from spatialforge.runner.serve.config import ServeSettings
from spatialforge.runner.serve.handler import handle
from spatialforge.runner.serve.measure import measure_params, respond_measure
from spatialforge.runner.serve.state import BadRequest, ServerState
from spatialforge.runner.settings import RunnerSettings
from spatialforge.runner.stages.depth import focal_for


def create_app(
    serve: ServeSettings,
    runner: RunnerSettings,
    *,
    on_fatal: Callable[[str], None] | None = None,
    loader: Callable[[ServerState], Any] | None = None,
) -> Starlette:
    """The app; the model loads in the background after start-up (liveness answers meanwhile).

    `on_fatal(reason)` is called when the model cannot load (the CLI stops the server, exit 1).
    """
    state = ServerState(serve=serve, runner=runner)
    app = Starlette(
        routes=[
            Route("/healthz", probes.healthz),
            Route("/readyz", probes.readyz),
            Route("/metrics", probes.metrics),
            Route("/v1/depth", depth, methods=["POST"]),
            Route("/v1/measure", measure, methods=["POST"]),
            Route(BATCHES_PATH, batches, methods=["POST"]),
        ],
        lifespan=lifecycle.lifespan(state, loader, on_fatal),
    )
    app.state.sf = state
    return app


async def depth(request: Request) -> Response:
    return await handle(request, _params, _respond)


async def measure(request: Request) -> Response:
    return await handle(request, measure_params, respond_measure)


def _params(request: Request) -> dict[str, Any]:
    q = request.query_params
    try:
        fmt = depth_formats.choose(q.get("format"), request.headers.get("accept"))
    except depth_formats.NotAcceptable as exc:
        raise BadRequest(406, "not_acceptable", str(exc)) from None
    except ValueError as exc:
        raise BadRequest(400, "bad_format", str(exc)) from None
    intrinsics = None
    if q.get("fx") is not None:
        try:
            values = {k: float(q[k]) for k in ("fx", "fy", "cx", "cy") if q.get(k) is not None}
            values.setdefault("fy", values["fx"])
            intrinsics = Intrinsics(**values)
        except (ValueError, TypeError) as exc:
            raise BadRequest(400, "bad_intrinsics", f"fx/fy/cx/cy: {' '.join(str(exc).split())}") from exc
    return {
        "name": q.get("name") or "upload",
        "format": fmt,
        "preview": q.get("preview", "1").lower() not in ("0", "false", "no"),
        "intrinsics": intrinsics,
    }


def _respond(state: ServerState, image: DecodedImage, depth: np.ndarray, params: dict[str, Any],
             _data: bytes | None = None) -> Response:
    est = state.estimator
    assert est is not None  # handle() answers only once the model is loaded
    ckpt = est.checkpoint
    fmt = params["format"]
    try:
        encoded, scale, raw_headers = encoding.encode(fmt, depth, png16_scale=ckpt.png16_scale, metric=ckpt.metric)
    except encoding.NotRepresentable as exc:
        raise BadRequest(406, "not_representable", str(exc)) from None
    h, w = depth.shape
    spec = DepthBatchSpec.model_construct(intrinsics=params["intrinsics"])  # focal_for reads only `intrinsics`
    k = focal_for(spec, image, w, h)
    source = "request" if k["source"] == "spec" else k["source"]
    meta = {
        "model": ckpt.name,
        "backend": est.backend.name,
        "metric": ckpt.metric,
        "units": "metres" if ckpt.metric else "relative-disparity",
        "scale": scale,
        "width": w,
        "height": h,
        "inputWidth": image.width,
        "inputHeight": image.height,
        "focalLengthPx": k["fx"],
        "focalSource": source,
        "intrinsics": {"fx": k["fx"], "fy": k["fy"], "cx": k["cx"], "cy": k["cy"]},
        "stats": {"min": float(depth.min()), "max": float(depth.max()), "mean": float(depth.mean())},
    }
    if fmt == "json":
        body: dict[str, Any] = {**meta, "png16": base64.b64encode(encoded).decode()}
        if params["preview"]:
            body["preview"] = base64.b64encode(encode_preview(depth, metric=ckpt.metric)).decode()
        return JSONResponse(body)
    headers = {
        "X-Depth-Model": ckpt.name,
        "X-Depth-Backend": est.backend.name,
        "X-Depth-Units": meta["units"],
        "X-Depth-Scale": repr(scale),
        "X-Depth-Width": str(w),
        "X-Depth-Height": str(h),
        "X-Focal-Length-Px": repr(k["fx"]),
        "X-Focal-Source": source,
        "X-Depth-Metadata": json.dumps(meta, separators=(",", ":")),
        **raw_headers,
    }
    return Response(encoded, media_type=depth_formats.BY_NAME[fmt].media_type, headers=headers)
