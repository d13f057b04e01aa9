"""The caller's usage and plan."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Query

from spatialforge.apiserver.api.deps import ApiKeyDep, ServicesDep
from spatialforge.apiserver.core import security
from spatialforge.apiserver.schemas import PlanPublic, UsagePublic, WebhookFailuresPublic
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


@router.get("/v1/webhooks/failures", response_model=WebhookFailuresPublic)
async def webhook_failures(principal: ApiKeyDep, services: ServicesDep,
                           limit: Annotated[int, Query(ge=1, le=100)] = 20) -> dict:
    """Completion webhooks given up after every attempt (or refused as unsafe), newest first;
    kept 30 days, the last 100."""
    data = await services.webhooks.failures(principal.tenant, limit)
    return {"data": data, "count": len(data)}
