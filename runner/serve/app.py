"""The depth server: one model, loaded once, behind a dynamic batcher (Starlette app).

    POST /v1/depth   body: the image bytes. Query: name (used in error messages), format
                     (json | png | preview; else from Accept), preview=0 (JSON without the
                     preview), fx, fy, cx, cy (intrinsics in input pixels, else EXIF, else
                     0.9 x the longer side).
    POST /v1/measure body: the image bytes; depth, then runner/measure.py (serve/measure.py)
    GET  /healthz    alive (also while the model loads)
    GET  /readyz     200 once the model is loaded and one warm-up batch has run; else 503
    GET  /metrics    Prometheus

Decoding and validation are the batch runner's (runner/images.py, the DepthBatch defaults for
the limits), so a bad image gets the same reason as in a DepthBatch (HTTP 422, 413 when too
large). A full queue answers 503 with Retry-After. Never a traceback to the client.
"""

from __future__ import annotations

import asyncio
import base64
import concurrent.futures as cf
import contextlib
import json
import logging
import time
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from typing import Any

import numpy as np
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from spatialforge.crds.constants import EXIT_INVALID_INPUT
from spatialforge.crds.v1alpha1.common import DepthModel, Intrinsics
from spatialforge.crds.v1alpha1.depthbatch import DepthBatchSpec
from spatialforge.runner.errors import InvalidImageError, MeasurementError, RunnerError
from spatialforge.runner.images import DecodedImage, check_size, decode_image, fit_pixels
from spatialforge.runner.preview import encode_preview
from spatialforge.runner.serve.batcher import BatchStats, DynamicBatcher, QueueFull
from spatialforge.runner.serve.config import ServeSettings
from spatialforge.runner.serve.measure import measure_params, respond_measure
from spatialforge.runner.serve.metrics import ServeMetrics
from spatialforge.runner.settings import RunnerSettings
from spatialforge.runner.stages.depth import MIN_DECODE_PIXELS, encode_png16, focal_for

log = logging.getLogger(__name__)
WARMUP_SIZE = (480, 640)  # (h, w) of the warm-up images: a common 4:3 photo after resizing
_FORMATS = {"json": "application/json", "png": "image/png", "preview": "image/jpeg"}


class BadRequest(Exception):
    def __init__(self, status: int, code: str, message: str) -> None:
        super().__init__(message)
        self.status, self.code, self.message = status, code, message


@dataclass(kw_only=True)
class ServerState:
    """What the app holds between requests."""

    serve: ServeSettings
    runner: RunnerSettings
    metrics: ServeMetrics = field(default_factory=ServeMetrics)
    estimator: Any = None
    batcher: DynamicBatcher | None = None
    ready: bool = False
    failure: str | None = None
    pool: cf.ThreadPoolExecutor | None = None
    loader: asyncio.Task[None] | None = None

    def load_model(self) -> Any:
        from spatialforge.runner.models.estimator import DepthEstimator

        model = DepthModel(size=self.serve.model_size, variant=self.serve.model_variant)
        return DepthEstimator.load(model, settings=self.runner)


def _error(status: int, code: str, message: str, *, retry_after: int | None = None) -> JSONResponse:
    headers = {"Retry-After": str(retry_after)} if retry_after is not None else None
    return JSONResponse({"error": code, "message": message}, status_code=status, headers=headers)


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

    async def load_and_warm() -> None:
        try:
            est = await asyncio.to_thread(loader or ServerState.load_model, state)
            batcher = DynamicBatcher(
                est.predict, max_batch=serve.max_batch, max_wait=serve.max_wait_ms / 1000.0, max_queue=serve.max_queue,
                on_batch=lambda s: _on_batch(state, s),
            )
            warm = est.preprocess(np.zeros((*WARMUP_SIZE, 3), np.uint8))
            t0 = time.monotonic()
            await batcher.run_now([warm] * serve.max_batch, [WARMUP_SIZE] * serve.max_batch)  # largest batch fits
            log.info("warm-up batch of %d ran in %.2f s", serve.max_batch, time.monotonic() - t0)
            batcher.start()
            state.estimator, state.batcher, state.ready = est, batcher, True
            state.metrics.ready.set(1)
            log.info("depth server ready: %s on %s (backend %s), max batch %d, max wait %.0f ms, max queue %d",
                     est.checkpoint.name, est.device.torch_device, est.backend.name, serve.max_batch, serve.max_wait_ms,
                     serve.max_queue)
        except Exception as exc:  # noqa: BLE001 - reported through readiness and on_fatal, never raised into the loop
            state.failure = exc.reason if isinstance(exc, RunnerError) else f"{type(exc).__name__}: {exc}"
            log.error("depth server cannot start: %s", state.failure)
            if on_fatal is not None:
                on_fatal(state.failure)

    @contextlib.asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[None]:
        state.pool = cf.ThreadPoolExecutor(serve.decode_workers, thread_name_prefix="sf-decode")
        state.loader = asyncio.get_running_loop().create_task(load_and_warm(), name="sf-load")
        try:
            yield
        finally:  # uvicorn runs this after in-flight requests finished (or drain_seconds passed)
            state.ready = False
            state.metrics.ready.set(0)
            state.loader.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await state.loader
            if state.batcher is not None:
                await state.batcher.stop()
            state.pool.shutdown(wait=False, cancel_futures=True)

    async def healthz(request: Request) -> Response:
        return JSONResponse({"status": "alive"})

    async def readyz(request: Request) -> Response:
        if state.ready:
            return JSONResponse({"status": "ready", "model": state.estimator.checkpoint.name,
                                 "backend": state.estimator.backend.name})
        if state.failure:
            return _error(503, "load_failed", state.failure)
        return _error(503, "not_ready", "model loading", retry_after=1)

    async def metrics(request: Request) -> Response:
        from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

        if state.batcher is not None:
            state.metrics.queue_depth.set(state.batcher.admitted)
        return Response(generate_latest(state.metrics.registry), media_type=CONTENT_TYPE_LATEST)

    async def depth(request: Request) -> Response:
        return await _handle(request, _params, _respond)

    async def measure(request: Request) -> Response:
        return await _handle(request, measure_params, respond_measure)

    async def _handle(request: Request, parse: Callable[[Request], dict[str, Any]], respond: Callable[..., Response]) -> Response:
        if not state.ready or state.batcher is None:
            state.metrics.rejected.labels("not_ready").inc()
            if state.failure:
                return _error(503, "load_failed", state.failure)
            return _error(503, "not_ready", "the model is loading", retry_after=1)
        batcher = state.batcher
        try:
            batcher.admit()
        except QueueFull as exc:
            state.metrics.rejected.labels("queue_full").inc()
            return _error(503, "queue_full", f"{batcher.max_queue} requests in flight; retry later",
                          retry_after=exc.retry_after)
        state.metrics.queue_depth.set(batcher.admitted)
        t0 = time.monotonic()
        outcome = "error"
        submitted = False
        try:
            params = parse(request)
            name = params["name"]
            data = await _read_body(request, name, serve.max_image_bytes)
            loop = asyncio.get_running_loop()
            image, pixels, out_size = await loop.run_in_executor(state.pool, _decode, state, name, data)
            kept = data if params.get("keep_bytes") else None  # measure reads the EXIF lens again
            del data
            submitted = True
            depth_map = await batcher.submit(pixels, out_size)
            response = await loop.run_in_executor(state.pool, respond, state, image, depth_map, params, kept)
            outcome = "ok"
            return response
        except BadRequest as exc:
            outcome = "bad_request"
            return _error(exc.status, exc.code, exc.message)
        except InvalidImageError as exc:
            outcome = "invalid_image"
            state.metrics.rejected.labels("invalid_image").inc()
            too_large = "more than maxImageBytes" in str(exc)
            return _error(413 if too_large else 422, "invalid_image", exc.reason)
        except MeasurementError as exc:
            outcome = "bad_request"
            return _error(422, "invalid_measurement", exc.reason)
        except Exception:  # noqa: BLE001 - logged here; the client gets a one-line answer
            log.exception("depth request failed")
            return _error(500, "internal", "the depth request failed on the server; see its log")
        finally:
            if not submitted:
                batcher.release()
            state.metrics.queue_depth.set(batcher.admitted)
            state.metrics.latency.labels(outcome).observe(time.monotonic() - t0)

    async def batches(request: Request) -> Response:
        """A small DepthBatch handed over by the operator (its hand-off to a warm pool): run with
        the batch runner's own stage (same decoding, outputs, manifest) and this server's loaded
        model, one shard; the operator writes the resource's status from the answer."""
        if not state.ready or state.estimator is None:
            return _error(503, "not_ready", state.failure or "the model is loading", retry_after=1)
        try:
            body = await request.json()
            meta = body.get("metadata") or {}
            spec = DepthBatchSpec.model_validate(body.get("spec") or {})
            namespace, name = str(meta["namespace"]), str(meta["name"])
        except (ValueError, KeyError, TypeError, AttributeError) as exc:
            return _error(400, "bad_request", " ".join(f"not a DepthBatch: {exc}".split())[:1024])
        loaded = DepthModel(size=serve.model_size, variant=serve.model_variant)
        if spec.model != loaded or spec.shards != 1:
            return _error(409, "wrong_pool", f"this server runs {loaded.size.value}/{loaded.variant.value} "
                                             "and takes one-shard batches only")
        from spatialforge.runner.errors import exit_code_for, reason_for
        from spatialforge.runner.stages.base import RunContext
        from spatialforge.runner.stages.depth import DepthStage

        ctx = RunContext(namespace=namespace, name=name, settings=state.runner,
                         estimator_loader=lambda *_a, **_k: state.estimator)
        t0 = time.monotonic()
        try:
            result = await asyncio.to_thread(DepthStage().run, spec, ctx)
        except Exception as exc:  # noqa: BLE001 - the operator gets the runner's exit code and reason
            code = exit_code_for(exc)
            if not isinstance(exc, RunnerError):
                log.exception("handed-off batch %s/%s failed", namespace, name)
            return JSONResponse({"error": "run_failed", "exitCode": code, "message": reason_for(exc)},
                                status_code=422 if code == EXIT_INVALID_INPUT else 500)
        finally:
            ctx.close()
        return JSONResponse({"manifestUri": result.manifest_uri, "items": result.items,
                             "seconds": round(time.monotonic() - t0, 4), "summary": result.summary})

    app = Starlette(
        routes=[
            Route("/healthz", healthz),
            Route("/readyz", readyz),
            Route("/metrics", metrics),
            Route("/v1/depth", depth, methods=["POST"]),
            Route("/v1/measure", measure, methods=["POST"]),
            Route("/v1/batches", batches, methods=["POST"]),
        ],
        lifespan=lifespan,
    )
    app.state.sf = state
    return app


def _on_batch(state: ServerState, stats: BatchStats) -> None:
    state.metrics.batch(stats.size, stats.seconds, stats.waited)


def _params(request: Request) -> dict[str, Any]:
    q = request.query_params
    fmt = (q.get("format") or "").lower()
    if not fmt:
        accept = request.headers.get("accept", "")
        fmt = "png" if "image/png" in accept else "preview" if "image/jpeg" in accept else "json"
    if fmt not in _FORMATS:
        raise BadRequest(400, "bad_format", f"format={fmt!r}: expected one of {', '.join(_FORMATS)}")
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


async def _read_body(request: Request, name: str, max_bytes: int) -> bytes:
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


def _decode(state: ServerState, name: str, data: bytes) -> tuple[DecodedImage, np.ndarray, tuple[int, int]]:
    """The DepthBatch stage's decode: same function, same limits, same reduced decode."""
    s = state.serve
    image = decode_image(
        name, data, max_pixels=s.max_image_pixels, max_bytes=s.max_image_bytes,
        target_pixels=max(s.max_output_pixels, MIN_DECODE_PIXELS),
    )
    pixels = state.estimator.preprocess(image.rgb)
    w, h = fit_pixels(image.width, image.height, s.max_output_pixels)
    return image, pixels, (h, w)


def _respond(state: ServerState, image: DecodedImage, depth: np.ndarray, params: dict[str, Any],
             _data: bytes | None = None) -> Response:
    est = state.estimator
    ckpt = est.checkpoint
    png, scale = encode_png16(depth, scale=ckpt.png16_scale)
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
    if params["format"] == "json":
        body: dict[str, Any] = {**meta, "png16": base64.b64encode(png).decode()}
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
    }
    if params["format"] == "png":
        return Response(png, media_type="image/png", headers=headers)
    return Response(encode_preview(depth, metric=ckpt.metric), media_type="image/jpeg", headers=headers)
