"""GET /healthz (alive, also while loading), /readyz (model loaded and warmed up), /metrics."""

from __future__ import annotations

from starlette.requests import Request
from starlette.responses import JSONResponse, Response

from spatialforge.runner.serve.state import error, state_of


async def healthz(request: Request) -> Response:
    return JSONResponse({"status": "alive"})


async def readyz(request: Request) -> Response:
    state = state_of(request)
    if state.ready and state.estimator is not None:
        return JSONResponse({"status": "ready", "model": state.estimator.checkpoint.name,
                             "backend": state.estimator.backend.name})
    if state.failure:
        return error(503, "load_failed", state.failure)
    return error(503, "not_ready", "model loading", retry_after=1)


async def metrics(request: Request) -> Response:
    from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

    state = state_of(request)
    if state.batcher is not None:
        state.metrics.queue_depth.set(state.batcher.admitted)
    return Response(generate_latest(state.metrics.registry), media_type=CONTENT_TYPE_LATEST)
