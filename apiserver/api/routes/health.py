"""Liveness and readiness (Redis, Kubernetes API, object store each reported).

Prometheus metrics are not served here: they have their own port (`metrics_port`), which the
ingress does not route.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable
from typing import Any

from fastapi import APIRouter
from fastapi.responses import JSONResponse

from spatialforge.apiserver.api.deps import CacheDep, KubeDep, RedisDep, StorageDep
from spatialforge.apiserver.services import quotas

router = APIRouter(tags=["health"])


@router.get("/health")
async def health() -> dict[str, str]:
    """Alive (the process answers)."""
    return {"status": "ok"}


async def _check(coro: Awaitable[Any], timeout: float = 2.0) -> str:
    try:
        await asyncio.wait_for(coro, timeout)
        return "ok"
    except Exception as exc:
        return f"unavailable: {type(exc).__name__}: {str(exc)[:160]}"


@router.get("/readyz", responses={503: {"description": "a dependency is down; `checks` names it"}})
async def readyz(redis: RedisDep, kube: KubeDep, cache: CacheDep, storage: StorageDep) -> JSONResponse:
    """Ready when Redis (with `maxmemory-policy noeviction`), the Kubernetes API (and the job
    cache) and the object store answer."""
    redis_ok, kube_ok, store_ok = await asyncio.gather(_check(redis.ping()), _check(kube.ping()),
                                                       _check(storage.ping()))
    if redis_ok == "ok":  # keys are quotas and records: a Redis that evicts them is not fit
        why = await quotas.eviction_problem(redis)
        redis_ok = f"unavailable: {why}" if why else "ok"
    if kube_ok == "ok" and not cache.ready():
        kube_ok = f"unavailable: job cache not synced ({cache.last_error or 'listing'})"
    checks = {"redis": redis_ok, "kubernetes": kube_ok, "object_store": store_ok}
    ok = all(v == "ok" for v in checks.values())
    reason = "; ".join(f"{k} {v}" for k, v in checks.items() if v != "ok")
    body: dict[str, Any] = {"status": "ready" if ok else "unavailable", "checks": checks}
    if not ok:
        body["reason"] = reason
    return JSONResponse(body, status_code=200 if ok else 503)
