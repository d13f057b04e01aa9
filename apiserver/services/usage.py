"""The tenant's month so far, and the public view of its plan."""

from __future__ import annotations

from typing import Any

from redis.asyncio import Redis

from spatialforge.apiserver.services import quotas
from spatialforge.apiserver.services.plans import Plan
from spatialforge.apiserver.services.tenants import Tenants


async def plan_public(tenants: Tenants, tenant: str, plan: Plan) -> dict[str, Any]:
    info = await tenants.info(tenant)
    grace = info.get("grace_until")
    return {"tenant": tenant, "plan": plan.name, "monthly_units": plan.monthly_units,
            "rate_per_minute": plan.rate_per_minute, "gpu_limit": plan.gpu_limit,
            "concurrent_jobs": plan.concurrent_jobs, "model_sizes": list(plan.model_sizes),
            "presets": list(plan.presets), "grace_until": float(grace) if grace else None}


async def usage(tenants: Tenants, redis: Redis, tenant: str) -> dict[str, Any]:
    plan = await tenants.plan(tenant)
    month = quotas.month()
    raw = await redis.hgetall(quotas.usage_key(tenant, month))
    jobs = {k.removeprefix("jobs_"): int(v) for k, v in raw.items() if k.startswith("jobs_")}
    return {"tenant": tenant, "month": month, "plan": plan.name, "units_used": int(raw.get("units", 0)),
            "units_limit": plan.monthly_units, "units_refunded": int(raw.get("units_refunded", 0)),
            "gpu_seconds": round(float(raw.get("gpu_seconds", 0.0)), 3),
            "upload_bytes": int(raw.get("upload_bytes", 0)), "jobs": jobs}
