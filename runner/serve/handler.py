"""One image request through the server: admit (or 503), read the body within its limit,
decode on a worker thread, one slot in a model batch, encode the answer on a worker thread.
Shared by POST /v1/depth and POST /v1/measure, which differ in `parse` and `respond` only."""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable
from typing import Any

import numpy as np
from starlette.requests import Request
from starlette.responses import Response

from spatialforge.runner.errors import InvalidImageError, MeasurementError
from spatialforge.runner.images import DecodedImage, check_size, decode_image, fit_pixels
from spatialforge.runner.serve.batcher import QueueFull
from spatialforge.runner.serve.state import BadRequest, ServerState, error, not_ready, state_of
from spatialforge.runner.stages.depth import MIN_DECODE_PIXELS

log = logging.getLogger("spatialforge.runner.serve.app")

Parse = Callable[[Request], dict[str, Any]]
Respond = Callable[[ServerState, DecodedImage, np.ndarray, dict[str, Any], "bytes | None"], Response]


async def handle(request: Request, parse: Parse, respond: Respond) -> Response:
    """Run one image request; every failure is a one-line answer, never a traceback."""
    state = state_of(request)
    batcher = state.batcher
    if not state.ready or batcher is None:
        state.metrics.rejected.labels("not_ready").inc()
        return not_ready(state)
    try:
        batcher.admit()
    except QueueFull as exc:
        state.metrics.rejected.labels("queue_full").inc()
        return error(503, "queue_full", f"{batcher.max_queue} requests in flight; retry later",
                     retry_after=exc.retry_after)
    state.metrics.queue_depth.set(batcher.admitted)
    t0 = time.monotonic()
    outcome = "error"
    submitted = False
    try:
        params = parse(request)
        name = params["name"]
        data = await read_body(request, name, state.serve.max_image_bytes)
        loop = asyncio.get_running_loop()
        image, pixels, out_size = await loop.run_in_executor(state.pool, decode, state, name, data)
        kept = data if params.get("keep_bytes") else None  # measure reads the EXIF lens again
        del data
        submitted = True
        depth_map = await batcher.submit(pixels, out_size)
        response = await loop.run_in_executor(state.pool, respond, state, image, depth_map, params, kept)
        outcome = "ok"
        return response
    except BadRequest as exc:
        outcome = "bad_request"
        return error(exc.status, exc.code, exc.message)
    except InvalidImageError as exc:
        outcome = "invalid_image"
        state.metrics.rejected.labels("invalid_image").inc()
        too_large = "more than maxImageBytes" in str(exc)
        return error(413 if too_large else 422, "invalid_image", exc.reason)
    except MeasurementError as exc:
        outcome = "bad_request"
        return error(422, "invalid_measurement", exc.reason)
    except Exception:  # noqa: BLE001 - logged here; the client gets a one-line answer
        log.exception("depth request failed")
        return error(500, "internal", "the depth request failed on the server; see its log")
    finally:
        if not submitted:
            batcher.release()
        state.metrics.queue_depth.set(batcher.admitted)
        state.metrics.latency.labels(outcome).observe(time.monotonic() - t0)


async def read_body(request: Request, name: str, max_bytes: int) -> bytes:
    """The upload, refused as soon as it is known to be over `max_bytes` (header or stream)."""
    length = request.headers.get("content-length")
    if length is not None and length.isdigit():
        check_size(name, int(length), max_bytes=max_bytes)
    chunks, total = [], 0
    async for chunk in request.stream():
        total += len(chunk)
        if total > max_bytes:
            check_size(name, total, max_bytes=max_bytes)  # raises with the DepthBatch's reason
        chunks.append(chunk)
    return b"".join(chunks)


def decode(state: ServerState, name: str, data: bytes) -> tuple[DecodedImage, np.ndarray, tuple[int, int]]:
    """The DepthBatch stage's decode: same function, same limits, same reduced decode."""
    s = state.serve
    assert state.estimator is not None  # handle() admits requests only once the model is loaded
    image = decode_image(
        name, data, max_pixels=s.max_image_pixels, max_bytes=s.max_image_bytes,
        target_pixels=max(s.max_output_pixels, MIN_DECODE_PIXELS),
    )
    pixels = state.estimator.preprocess(image.rgb)
    w, h = fit_pixels(image.width, image.height, s.max_output_pixels)
    return image, pixels, (h, w)
