"""The FastAPI app: `create_app(settings)` wires middleware, routers and the lifespan clients."""

from __future__ import annotations

import logging
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

from spatialforge.apiserver import errors
from spatialforge.apiserver.api.deps import Services
from spatialforge.apiserver.api.main import api_router
from spatialforge.apiserver.core import logging as sf_logging
from spatialforge.apiserver.core.config import Settings, get_settings
from spatialforge.apiserver.core.errors import ApiError
from spatialforge.apiserver.core.metrics import Metrics
from spatialforge.apiserver.middleware import ServiceMiddleware
from spatialforge.apiserver.services.billing import Billing, configure_stripe
from spatialforge.apiserver.services.gate import Gate
from spatialforge.apiserver.services.jobs import JobService
from spatialforge.apiserver.services.kube import JobCache, Kube, make_api_client
from spatialforge.apiserver.services.quotas import Quotas
from spatialforge.apiserver.services.storage import Storage
from spatialforge.apiserver.services.tenants import Tenants
from spatialforge.apiserver.services.webhooks import WebhookSender

log = logging.getLogger("spatialforge.apiserver")

TAGS = [{"name": n, "description": d} for n, d in (
    ("jobs", "DepthBatch and ReconstructionJob resources in your namespace"),
    ("uploads", "Signed PUT URLs into your input prefix"), ("usage", "Your plan, usage and webhook secret"),
    ("billing", "Stripe Checkout, portal and webhooks"), ("admin", "Admin keys only"),
    ("health", "Liveness, readiness, metrics"))]


# The one table from domain errors (apiserver/errors.py) to HTTP statuses; the first class in an
# error's MRO that is listed decides.
ERROR_STATUS: dict[type[errors.ServiceError], int] = {
    errors.BadRequest: 400,
    errors.Unauthorized: 401,
    errors.PaymentRequired: 402,
    errors.Forbidden: 403,
    errors.NotFound: 404,
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


def _install_handlers(app: FastAPI) -> None:
    @app.exception_handler(errors.ServiceError)
    async def service_error(request: Request, exc: errors.ServiceError) -> JSONResponse:
        status = status_of(exc)
        if status == 500:
            log.error("unmapped service error %s: %s", type(exc).__name__, exc.message)
            return _error(500, "internal", "internal error")
        return _error(status, exc.code, exc.message, exc.headers, **exc.details)

    @app.exception_handler(ApiError)
    async def api_error(request: Request, exc: ApiError) -> JSONResponse:
        return _error(exc.status, exc.code, exc.message, exc.headers)

    @app.exception_handler(StarletteHTTPException)
    async def http_error(request: Request, exc: StarletteHTTPException) -> JSONResponse:
        code = FRAMEWORK_CODES.get(exc.status_code, "error")
        message = exc.detail if isinstance(exc.detail, str) else code.replace("_", " ")
        if exc.status_code == 404 and message == "Not Found":
            message = f"no route for {request.url.path}"
        elif exc.status_code == 405:
            message = f"{request.method} is not allowed on {request.url.path}"
        return _error(exc.status_code, code, message, dict(exc.headers or {}))

    @app.exception_handler(RequestValidationError)
    async def invalid(request: Request, exc: RequestValidationError) -> JSONResponse:
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
        log.error("Redis unavailable: %s", type(exc).__name__)
        return _error(503, "unavailable", "Redis is unavailable; nothing was changed", {"Retry-After": "5"})

    @app.exception_handler(ApiException)
    async def kube_error(request: Request, exc: ApiException) -> JSONResponse:
        if exc.status == 422:
            return _error(422, "invalid_request", f"the Kubernetes API refused the resource: {exc.reason}")
        log.error("Kubernetes API error %s: %s", exc.status, exc.reason)
        return _error(503, "unavailable", "the Kubernetes API is unavailable; nothing was created",
                      {"Retry-After": "5"})

    @app.exception_handler(OSError)
    async def connection_error(request: Request, exc: OSError) -> JSONResponse:
        log.error("dependency unreachable: %s", type(exc).__name__)
        return _error(503, "unavailable", "a dependency is unreachable; nothing was created",
                      {"Retry-After": "5"})

    @app.exception_handler(Exception)
    async def unexpected(request: Request, exc: Exception) -> JSONResponse:
        log.exception("unhandled error on %s %s", request.method, request.url.path)
        return _error(500, "internal", "internal error; the request id identifies it in the logs")


def create_app(settings: Settings | None = None) -> FastAPI:
    """Build the app. Settings are validated here: weak secrets refuse to start (not dev mode)."""
    settings = settings or get_settings()
    sf_logging.setup(settings.secret_values(), json_logs=settings.log_json)
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
        configure_stripe(settings)
        tenants = Tenants(redis, settings.hmac_key())
        quotas = Quotas(redis)
        webhooks = WebhookSender(redis, settings.hmac_key(), settings.webhook_allow,
                                 attempts=settings.webhook_max_attempts, backoff=settings.webhook_backoff_seconds,
                                 timeout=settings.webhook_timeout_seconds, metrics=metrics,
                                 poll=settings.webhook_poll_seconds, lease=settings.webhook_lease_seconds,
                                 concurrency=settings.webhook_concurrency)
        gate = Gate(redis, settings.hmac_key(), settings.previous_hmac_key())
        services = Services(settings=settings, redis=redis, kube=kube, cache=cache, storage=storage, tenants=tenants,
                            gate=gate, quotas=quotas, billing=None, webhooks=webhooks, jobs=None, metrics=metrics)

        async def plan_changed(tenant: str) -> None:
            await services.jobs.apply_plan(tenant)

        services.billing = Billing(settings, tenants, plan_changed, metrics)
        services.jobs = JobService(settings=settings, redis=redis, kube=kube, cache=cache, tenants=tenants,
                                   quotas=quotas, storage=storage, billing=services.billing, webhooks=webhooks,
                                   metrics=metrics)
        cache.listeners.append(services.jobs.on_terminal)
        app.state.services = services
        cache.start()
        webhooks.start()  # delivers due webhooks from Redis, including those a stopped replica left
        grace = services.billing.grace_sweeper(settings.grace_sweep_seconds)  # degrades expired grace periods
        grace.start()
        log.info("front end started")
        try:
            yield
        finally:
            await grace.stop()
            await cache.stop()
            await webhooks.close()
            await redis.aclose()
            await api.close()

    app = FastAPI(title="SpatialForge API", version="0.1.0", lifespan=lifespan, openapi_tags=TAGS,
                  description="Monocular depth and video-to-3D jobs as Kubernetes custom resources.",
                  generate_unique_id_function=lambda route: f"{route.tags[0] if route.tags else 'api'}-{route.name}")
    app.state.settings = settings
    _install_handlers(app)
    app.include_router(api_router)
    if settings.cors_origins:
        app.add_middleware(CORSMiddleware, allow_origins=settings.cors_origins, allow_methods=["*"],
                           allow_headers=["*"], expose_headers=["X-Request-ID", "Retry-After", "X-RateLimit-Limit",
                                                                "X-RateLimit-Remaining", "X-RateLimit-Reset"])
    app.add_middleware(ServiceMiddleware, timeout=settings.request_timeout_seconds, metrics=metrics)
    return app
