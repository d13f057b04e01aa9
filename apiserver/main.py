"""The FastAPI app: `create_app(settings)` wires middleware, routers and the lifespan clients."""

from __future__ import annotations

import asyncio
import gc
import json
import logging
from collections.abc import Awaitable, Callable
from contextlib import asynccontextmanager
from typing import Any

import redis.asyncio as aioredis
import redis.exceptions
from redis.asyncio.retry import Retry
from redis.backoff import ExponentialBackoff
from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.middleware.cors import CORSMiddleware
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException as StarletteHTTPException
from kubernetes_asyncio.client.exceptions import ApiException
from prometheus_client import start_http_server
from uvicorn.middleware.proxy_headers import ProxyHeadersMiddleware

from spatialforge.aio import within
from spatialforge.apiserver import console, errors
from spatialforge.apiserver.api.main import api_router
from spatialforge.apiserver.api.routes import sync as sync_routes
from spatialforge.apiserver.core import logging as sf_logging
from spatialforge.apiserver.core.config import Settings, get_settings
from spatialforge.apiserver.core.metrics import Metrics
from spatialforge.apiserver.middleware import GuardMiddleware, ServiceMiddleware
from spatialforge.apiserver.services.billing import Billing
from spatialforge.apiserver.services.gate import Gate
from spatialforge.apiserver.services.job_reads import JobReads
from spatialforge.apiserver.services.job_submission import JobSubmission
from spatialforge.apiserver.services.job_terminal import JobTerminal
from spatialforge.apiserver.services.jobs import JobLookup
from spatialforge.apiserver.services.kube import JobCache, Kube, make_api_client
from spatialforge.apiserver.services.namespaces import Namespaces
from spatialforge.apiserver.services.quotas import Quotas
from spatialforge.apiserver.services.pool import DepthPools, PoolRef
from spatialforge.apiserver.services.storage import Storage
from spatialforge.apiserver.services.sync import SyncService
from spatialforge.apiserver.services.tenants import Tenants
from spatialforge.apiserver.services.uploads import Uploads
from spatialforge.apiserver.services.webhooks import WebhookSender
from spatialforge.gctune import tune_gc

log = logging.getLogger("spatialforge.apiserver")

TAGS = [{"name": n, "description": d} for n, d in (
    ("jobs", "DepthBatch and ReconstructionJob resources in your namespace"),
    ("depth", "Synchronous depth and measurement on one image, served by a warm DepthPool"),
    ("uploads", "Signed upload forms into your input prefix; your uploads"), ("usage", "Your plan, usage and webhook secret"),
    ("billing", "Stripe Checkout, portal and webhooks"), ("admin", "Admin keys only"),
    ("health", "Liveness and readiness (metrics have their own port)"))]


# The one table from domain errors (apiserver/errors.py) to HTTP statuses; the first class in an
# error's MRO that is listed decides.
ERROR_STATUS: dict[type[errors.ServiceError], int] = {
    errors.BadRequest: 400,
    errors.Unauthorized: 401,
    errors.PaymentRequired: 402,
    errors.Forbidden: 403,
    errors.NotFound: 404,
    errors.NotAcceptable: 406,
    errors.Conflict: 409,
    errors.Gone: 410,
    errors.PayloadTooLarge: 413,
    errors.InvalidRequest: 422,
    errors.RateLimited: 429,
    errors.QuotaExceeded: 429,
    errors.Unavailable: 503,
}
# Starlette's own HTTP errors (routing, method, body) in the documented shape.
FRAMEWORK_CODES = {400: "bad_request", 401: "unauthenticated", 403: "forbidden", 404: "not_found",
                   405: "method_not_allowed", 413: "payload_too_large", 415: "unsupported_media_type",
                   422: "invalid_request", 429: "rate_limited", 503: "unavailable"}


def status_of(exc: errors.ServiceError) -> int:
    for cls in type(exc).__mro__:
        if cls in ERROR_STATUS:
            return ERROR_STATUS[cls]
    return 500


def error_body(code: str, message: str, **extra: Any) -> dict[str, Any]:
    """The documented error body: {"error": {"code", "message", ...}, "request_id"}."""
    return {"error": {"code": code, "message": message, **extra}, "request_id": sf_logging.request_id.get()}


def _error(status: int, code: str, message: str, headers: dict[str, str] | None = None,
           **extra: Any) -> JSONResponse:
    return JSONResponse(error_body(code, message, **extra), status_code=status, headers=headers)


def _field(loc: tuple[Any, ...] | list[Any]) -> str:
    return ".".join(str(p) for p in loc if p not in ("body", "query", "path", "header"))


def _release(exc: BaseException) -> None:
    """Drop what a handled exception holds, so it is freed now rather than by a cyclic
    collection. FastAPI raises a body error from a frame that keeps the error in a local:
    error, traceback and frame form a cycle that holds the whole body (the raw bytes, the
    decoded text, the JSON error's copy). With the tuned GC thresholds (`tune_gc`), 1,000
    malformed 1 MB bodies grew the process by 900 MB before every handler released its error."""
    exc.__traceback__ = None
    exc.__cause__ = exc.__context__ = None
    if isinstance(exc, RequestValidationError):
        exc.body = None  # the body FastAPI attaches for its default handler


def _install_handlers(app: FastAPI) -> None:
    @app.exception_handler(errors.ServiceError)
    async def service_error(request: Request, exc: errors.ServiceError) -> JSONResponse:
        _release(exc)
        status = status_of(exc)
        if status == 500:
            log.error("unmapped service error %s: %s", type(exc).__name__, exc.message)
            return _error(500, "internal", "internal error")
        return _error(status, exc.code, exc.message, exc.headers, **exc.details)

    @app.exception_handler(StarletteHTTPException)
    async def http_error(request: Request, exc: StarletteHTTPException) -> JSONResponse:
        _release(exc)
        code = FRAMEWORK_CODES.get(exc.status_code, "error")
        message = exc.detail if isinstance(exc.detail, str) else code.replace("_", " ")
        if exc.status_code == 404 and message == "Not Found":
            message = f"no route for {request.url.path}"
        elif exc.status_code == 413:
            limit = getattr(request.scope.get("route"), "max_body_size", None) or request.app.state.settings.max_body_bytes
            return _error(413, code, f"request bodies are limited to {limit} bytes", limit=limit)
        elif exc.status_code == 405:
            message = f"{request.method} is not allowed on {request.url.path}"
        return _error(exc.status_code, code, message, dict(exc.headers or {}))

    @app.exception_handler(RequestValidationError)
    async def invalid(request: Request, exc: RequestValidationError) -> JSONResponse:
        _release(exc)
        problems = list(exc.errors())
        broken = next((e for e in problems if e.get("type") == "json_invalid"), None)
        if broken is not None:  # the body is not JSON at all: no field to name (the loc is a byte offset)
            why = (broken.get("ctx") or {}).get("error") or "JSON decode error"
            return _error(400, "invalid_json", f"the request body is not valid JSON ({why})")
        fields = [{"field": _field(e["loc"]), "message": e["msg"]} for e in problems]
        names = ", ".join(f["field"] or "body" for f in fields)
        return _error(422, "invalid_request", f"invalid fields: {names}", fields=fields)

    @app.exception_handler(redis.exceptions.ConnectionError)
    @app.exception_handler(redis.exceptions.TimeoutError)
    async def redis_down(request: Request, exc: Exception) -> JSONResponse:
        _release(exc)
        log.error("Redis unavailable: %s", type(exc).__name__)
        return _error(503, "unavailable", "Redis is unavailable; nothing was changed", {"Retry-After": "5"})

    @app.exception_handler(ApiException)
    async def kube_error(request: Request, exc: ApiException) -> JSONResponse:
        _release(exc)
        if exc.status == 422:
            return _error(422, "invalid_request", f"the Kubernetes API refused the resource: {exc.reason}")
        try:  # the API's own sentence (what was refused, to whom); never a secret
            detail = str(json.loads(exc.body or "{}").get("message", ""))[:300]
        except (ValueError, AttributeError):
            detail = ""
        log.error("Kubernetes API error %s: %s %s", exc.status, exc.reason, detail)
        if exc.status == 403:  # a deployment defect (RBAC, an admission policy), not an outage
            return _error(503, "unavailable", "the cluster refused this service's request (permissions); nothing "
                          "was created; the operators of this service have been told in its logs")
        return _error(503, "unavailable", "the Kubernetes API is unavailable; nothing was created",
                      {"Retry-After": "5"})

    @app.exception_handler(OSError)
    async def connection_error(request: Request, exc: OSError) -> JSONResponse:
        _release(exc)
        log.error("dependency unreachable: %s", type(exc).__name__)
        return _error(503, "unavailable", "a dependency is unreachable; nothing was created",
                      {"Retry-After": "5"})

    @app.exception_handler(Exception)
    async def unexpected(request: Request, exc: Exception) -> JSONResponse:
        log.exception("unhandled error on %s %s", request.method, request.url.path)
        _release(exc)
        return _error(500, "internal", "internal error; the request id identifies it in the logs")


def render(exc: Exception) -> tuple[int, bytes, dict[str, str]]:
    """A domain error as (status, documented JSON body, headers), for the ASGI middleware."""
    if isinstance(exc, errors.ServiceError):
        status, body = status_of(exc), error_body(exc.code, exc.message, **exc.details)
        headers = exc.headers
    else:
        status, body, headers = 500, error_body("internal", "internal error"), {}
    return status, json.dumps(body, separators=(",", ":")).encode(), headers


# Paths under /v1/ that take no API key (Stripe signs its own calls).
PUBLIC_V1 = frozenset({"/v1/billing/webhooks"})


def _serve_metrics(settings: Settings, metrics: Metrics) -> Any:
    """Prometheus /metrics on its own port (the Service's `metrics` port, not routed by the
    ingress). A second worker process finds the port taken and serves none (see docs)."""
    if not settings.metrics_port:
        return None
    try:
        server, _ = start_http_server(settings.metrics_port, settings.metrics_host, registry=metrics.registry)
    except OSError as exc:
        log.warning("metrics port %d not served by this process (%s)", settings.metrics_port, exc.strerror)
        return None
    return server


async def _freeze_after_sync(cache: JobCache) -> None:
    """Once the job cache has listed every resource, those long-lived objects are frozen too."""
    await asyncio.gather(*(event.wait() for event in cache.synced.values()))
    gc.freeze()


SHUTDOWN_STEP_SECONDS = 5.0


async def _shut_down(steps: list[tuple[str, Callable[[], Awaitable[Any]], float]]) -> None:
    """Close each client in turn, none for longer than its bound: a stop must never hang on a
    pooled connection or a watch that does not answer its cancellation (seen twice in CI, a
    front end still stopping 30 s after it was told to). What is left behind is logged."""
    for name, close, seconds in steps:
        try:
            if not await within(close(), seconds):
                log.warning("shutdown: %s did not close within %.0f s; left behind", name, seconds)
        except Exception as exc:  # noqa: BLE001 - one failing close must not keep the rest open
            log.warning("shutdown: %s failed to close (%s)", name, type(exc).__name__)


def create_app(settings: Settings | None = None) -> FastAPI:
    """Build the app. Settings are validated here: weak secrets refuse to start (not dev mode)."""
    settings = settings or get_settings()
    sf_logging.setup(settings.secret_values(), json_logs=settings.log_json,
                     level=logging.getLevelName(settings.log_level))
    if settings.dev_mode:
        log.warning("dev mode: weak or missing secrets are accepted; never run this in production")
    metrics = Metrics()

    @asynccontextmanager
    async def lifespan(app: FastAPI):  # type: ignore[no-untyped-def]
        # Pooled connections go stale when Redis restarts; a connection error is retried on a
        # fresh connection (a timeout is not: the command may have run).
        redis = aioredis.Redis.from_url(settings.redis_url, decode_responses=True, socket_timeout=2,
                                        socket_connect_timeout=1, retry_on_error=[aioredis.ConnectionError],
                                        retry=Retry(ExponentialBackoff(cap=0.5, base=0.05), 2))
        api = await make_api_client(settings.kubeconfig)
        kube = Kube(api)
        cache = JobCache(kube)
        storage = Storage(settings)
        try:
            await storage.ensure_bucket()
        except Exception as exc:
            log.warning("object store not reachable at start (%s); /readyz reports it", type(exc).__name__)
        tenants = Tenants(redis, settings.hmac_key())
        namespaces = Namespaces(kube, tenants, settings.namespace_prefix)
        quotas = Quotas(redis)
        webhooks = WebhookSender(redis, settings.hmac_key(), settings.webhook_allow,
                                 attempts=settings.webhook_max_attempts, backoff=settings.webhook_backoff_seconds,
                                 timeout=settings.webhook_timeout_seconds, metrics=metrics,
                                 poll=settings.webhook_poll_seconds, lease=settings.webhook_lease_seconds,
                                 concurrency=settings.webhook_concurrency)
        billing = Billing(settings, redis=redis, tenants=tenants, namespaces=namespaces, metrics=metrics)
        uploads = Uploads(settings=settings, redis=redis, storage=storage)
        lookup = JobLookup(settings=settings, redis=redis, cache=cache, namespaces=namespaces)
        state = app.state
        state.job_submission = JobSubmission(settings=settings, redis=redis, kube=kube, cache=cache,
                                             namespaces=namespaces, quotas=quotas, storage=storage, uploads=uploads,
                                             billing=billing, metrics=metrics)
        state.job_reads = JobReads(settings=settings, redis=redis, storage=storage, lookup=lookup)
        state.job_terminal = terminal = JobTerminal(redis=redis, kube=kube, cache=cache, lookup=lookup, quotas=quotas,
                                                    billing=billing, webhooks=webhooks)
        state.redis, state.kube, state.cache, state.storage, state.tenants = redis, kube, cache, storage, tenants
        state.namespaces, state.quotas, state.webhooks, state.billing = namespaces, quotas, webhooks, billing
        state.uploads = uploads
        pools = DepthPools(api, [PoolRef.parse(p) for p in settings.depth_pools.split(",") if p.strip()], redis=redis,
                           ttl=settings.pool_refresh_seconds, timeout=settings.sync_timeout_seconds, metrics=metrics)
        state.pools = pools
        state.sync = SyncService(settings=settings, redis=redis, pools=pools, quotas=quotas, tenants=tenants,
                                 billing=billing, storage=storage)
        state.gate = Gate(redis, settings.hmac_key(), settings.previous_hmac_key(),
                          failed_auth_limit=settings.failed_auth_per_ip_per_minute, metrics=metrics)
        cache.listeners.append(terminal.on_terminal)
        cache.start()
        webhooks.start()  # delivers due webhooks from Redis, including those a stopped replica left
        grace = billing.grace_sweeper(settings.grace_sweep_seconds)  # degrades expired grace periods
        grace.start()
        metrics_server = _serve_metrics(settings, metrics)
        tune_gc()
        refreeze = asyncio.create_task(_freeze_after_sync(cache), name="gc-freeze-after-sync")
        log.info("front end started")
        try:
            yield
        finally:
            refreeze.cancel()
            if metrics_server is not None:
                metrics_server.shutdown()
                metrics_server.server_close()
            await _shut_down([("grace sweeper", grace.stop, SHUTDOWN_STEP_SECONDS),
                              ("job cache", cache.stop, SHUTDOWN_STEP_SECONDS),
                              ("pools", pools.close, SHUTDOWN_STEP_SECONDS),
                              # attempts in flight may finish: twice the per-attempt bound, and some
                              ("webhooks", webhooks.close, 2 * settings.webhook_timeout_seconds + 5),
                              ("billing", billing.close, SHUTDOWN_STEP_SECONDS),
                              ("redis", redis.aclose, SHUTDOWN_STEP_SECONDS),
                              ("kubernetes client", api.close, SHUTDOWN_STEP_SECONDS)])

    docs = settings.docs_enabled()
    app = FastAPI(title="SpatialForge API", version="0.1.0", lifespan=lifespan, openapi_tags=TAGS,
                  description="Monocular depth and video-to-3D jobs as Kubernetes custom resources.",
                  generate_unique_id_function=lambda route: f"{route.tags[0] if route.tags else 'api'}-{route.name}",
                  docs_url="/docs" if docs else None, redoc_url="/redoc" if docs else None,
                  openapi_url="/openapi.json" if docs else None)
    app.state.settings = settings
    app.state.metrics = metrics
    _install_handlers(app)
    # Chunked bodies are counted as they stream (a Content-Length is checked by GuardMiddleware).
    app.include_router(api_router, max_body_size=settings.max_body_bytes)
    app.include_router(sync_routes.router, max_body_size=sync_routes.body_limit(settings))  # image uploads
    if settings.console_enabled:  # static files only; the page calls the /v1 API like any client
        console.mount(app)
    app.add_middleware(GuardMiddleware, max_body=settings.max_body_bytes, public=PUBLIC_V1, render=render,
                       body_limits=dict.fromkeys(sync_routes.PATHS, sync_routes.body_limit(settings)),
                       unavailable=(redis.exceptions.ConnectionError, redis.exceptions.TimeoutError))
    if settings.cors_origins:
        app.add_middleware(CORSMiddleware, allow_origins=settings.cors_origins, allow_methods=["*"],
                           allow_headers=["*"], expose_headers=["X-Request-ID", "Retry-After", "X-RateLimit-Limit",
                                                                "X-RateLimit-Remaining", "X-RateLimit-Reset",
                                                                "X-Quota-Limit", "X-Quota-Remaining", "X-Quota-Reset",
                                                                "X-Concurrent-Jobs-Limit", "Idempotent-Replayed"])
    app.add_middleware(ServiceMiddleware, timeout=settings.request_timeout_seconds, metrics=metrics)
    if settings.trusted_proxies:  # outermost: every limit and log line sees the forwarded client
        app.add_middleware(ProxyHeadersMiddleware, trusted_hosts=settings.trusted_proxies)
    return app
