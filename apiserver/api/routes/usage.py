"""The caller's usage and plan."""

from __future__ import annotations

from fastapi import APIRouter

from spatialforge.apiserver.api.deps import ApiKeyDep, ServicesDep
from spatialforge.apiserver.core import security
from spatialforge.apiserver.schemas import PlanPublic, UsagePublic
from spatialforge.apiserver.services import usage as usage_service

router = APIRouter(tags=["usage"])


@router.get("/v1/usage", response_model=UsagePublic)
async def read_usage(principal: ApiKeyDep, services: ServicesDep) -> dict:
    """Units used this month (UTC), finished jobs by phase, GPU-seconds."""
    return await usage_service.usage(services, principal.tenant)


@router.get("/v1/plan", response_model=PlanPublic)
async def read_plan(principal: ApiKeyDep, services: ServicesDep) -> dict:
    """The caller's plan and limits."""
    return await usage_service.plan_public(services, principal.tenant,
                                           await services.jobs.current_plan(principal.tenant))


@router.get("/v1/webhooks/secret")
async def webhook_secret(principal: ApiKeyDep, services: ServicesDep) -> dict[str, str]:
    """The secret completion webhooks are signed with (header SpatialForge-Signature: t=...,v1=...)."""
    return {"secret": security.tenant_webhook_secret(services.settings.hmac_key(), principal.tenant)}
