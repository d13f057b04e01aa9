"""Dependencies as Annotated aliases: RedisDep, ServicesDep, ApiKeyDep, AdminDep, SettingsDep."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Annotated, Any

from fastapi import Depends, Request
from redis.asyncio import Redis

from spatialforge.apiserver.core import logging as sf_logging
from spatialforge.apiserver.core.config import Settings, get_settings
from spatialforge.apiserver.core.errors import ApiError
from spatialforge.apiserver.services.tenants import Principal


@dataclass
class Services:
    """Clients built once in the lifespan (main.py) and shared by every request."""

    settings: Settings
    redis: Redis
    kube: Any
    cache: Any
    storage: Any
    tenants: Any
    gate: Any
    quotas: Any
    billing: Any
    webhooks: Any
    jobs: Any
    metrics: Any


async def get_services(request: Request) -> Services:
    return request.app.state.services


async def app_settings(request: Request) -> Settings:
    """The settings `create_app` was given (tests swap them with app.dependency_overrides)."""
    return getattr(request.app.state, "settings", None) or get_settings()


SettingsDep = Annotated[Settings, Depends(app_settings)]
ServicesDep = Annotated[Services, Depends(get_services)]


async def get_redis(services: ServicesDep) -> Redis:
    return services.redis


RedisDep = Annotated[Redis, Depends(get_redis)]


def _presented_key(request: Request) -> str | None:
    key = request.headers.get("x-api-key")
    if key:
        return key.strip()
    auth = request.headers.get("authorization", "")
    scheme, _, value = auth.partition(" ")
    if scheme.lower() == "bearer" and value:
        return value.strip()
    return None


async def current_principal(request: Request, services: ServicesDep) -> Principal:
    """Authenticate the key, then charge one request against the tenant's per-minute rate."""
    key = _presented_key(request)
    if not key:
        raise ApiError(401, "unauthenticated", "send an API key as X-API-Key or Authorization: Bearer",
                       {"WWW-Authenticate": "Bearer"})
    admission = await services.gate.admit(key)  # one Redis round trip: key, plan, rate
    principal = admission.principal
    if principal is None:
        raise ApiError(401, "invalid_key", "the API key is invalid or revoked", {"WWW-Authenticate": "Bearer"})
    decision = admission.decision
    if decision is not None:
        if not decision.allowed:
            services.metrics.refusals.labels("rate").inc()
            raise ApiError(429, "rate_limited", f"more than {decision.limit} requests per minute",
                           {**decision.headers, "Retry-After": str(decision.reset)})
        sf_logging.response_headers.get().update(decision.headers)
    request.state.tenant = principal.tenant
    return principal


ApiKeyDep = Annotated[Principal, Depends(current_principal)]


async def admin_principal(principal: ApiKeyDep) -> Principal:
    if principal.role != "admin":
        raise ApiError(403, "admin_only", "this endpoint needs an admin key")
    return principal


AdminDep = Annotated[Principal, Depends(admin_principal)]
