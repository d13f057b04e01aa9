"""The caller's usage and plan."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Query

from spatialforge.apiserver.api.deps import ApiKeyDep, BillingDep, RedisDep, SettingsDep, TenantsDep, WebhooksDep
from spatialforge.apiserver.core import security
from spatialforge.apiserver.schemas import PlanPublic, UsagePublic, WebhookFailuresPublic
from spatialforge.apiserver.services import usage as usage_service

router = APIRouter(tags=["usage"])


@router.get("/v1/usage", response_model=UsagePublic)
async def read_usage(principal: ApiKeyDep, tenants: TenantsDep, redis: RedisDep) -> dict:
    """Units used this month (UTC; refunds of jobs that never ran deducted), finished jobs by
    phase, GPU-seconds, uploaded bytes."""
    return await usage_service.usage(tenants, redis, principal.tenant)


@router.get("/v1/plan", response_model=PlanPublic)
async def read_plan(principal: ApiKeyDep, tenants: TenantsDep, billing: BillingDep) -> dict:
    """The caller's plan and limits."""
    return await usage_service.plan_public(tenants, principal.tenant, await billing.current_plan(principal.tenant))


@router.get("/v1/webhooks/secret")
async def webhook_secret(principal: ApiKeyDep, settings: SettingsDep) -> dict[str, str]:
    """The secret completion webhooks are signed with (header SpatialForge-Signature: t=...,v1=...)."""
    return {"secret": security.tenant_webhook_secret(settings.hmac_key(), principal.tenant)}


@router.get("/v1/webhooks/failures", response_model=WebhookFailuresPublic)
async def webhook_failures(principal: ApiKeyDep, webhooks: WebhooksDep,
                           limit: Annotated[int, Query(ge=1, le=100)] = 20) -> dict:
    """Completion webhooks given up after every attempt (or refused as unsafe), newest first;
    kept 30 days, the last 100."""
    data = await webhooks.failures(principal.tenant, limit)
    return {"data": data, "count": len(data)}
