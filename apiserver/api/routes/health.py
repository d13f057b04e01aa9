"""Liveness, readiness (Redis, Kubernetes API, object store each reported) and metrics."""

from __future__ import annotations

import asyncio

from fastapi import APIRouter, Response
from fastapi.responses import JSONResponse
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

from spatialforge.apiserver.api.deps import ServicesDep

router = APIRouter(tags=["health"])


@router.get("/health")
async def health() -> dict[str, str]:
    """Alive (the process answers)."""
    return {"status": "ok"}


async def _check(coro, timeout: float = 2.0) -> str:  # type: ignore[no-untyped-def]
    try:
        await asyncio.wait_for(coro, timeout)
        return "ok"
    except Exception as exc:
        return f"unavailable: {type(exc).__name__}: {str(exc)[:160]}"


@router.get("/readyz", responses={503: {"description": "a dependency is down; `checks` names it"}})
async def readyz(services: ServicesDep) -> JSONResponse:
    """Ready when Redis, the Kubernetes API (and the job cache) and the object store answer."""
    redis, kube, store = await asyncio.gather(_check(services.redis.ping()), _check(services.kube.ping()),
                                              _check(services.storage.ping()))
    if kube == "ok" and not services.cache.ready():
        kube = f"unavailable: job cache not synced ({services.cache.last_error or 'listing'})"
    checks = {"redis": redis, "kubernetes": kube, "object_store": store}
    ok = all(v == "ok" for v in checks.values())
    reason = "; ".join(f"{k} {v}" for k, v in checks.items() if v != "ok")
    body = {"status": "ready" if ok else "unavailable", "checks": checks}
    if not ok:
        body["reason"] = reason
    return JSONResponse(body, status_code=200 if ok else 503)


@router.get("/metrics", include_in_schema=False)
async def metrics(services: ServicesDep) -> Response:
    return Response(generate_latest(services.metrics.registry), media_type=CONTENT_TYPE_LATEST)
