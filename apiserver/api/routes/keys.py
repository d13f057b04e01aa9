"""Admin: keys (create, list, revoke, rotate), tenant plans and limits, tenant usage."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Body, Query

from spatialforge.apiserver.api.deps import AdminDep, NamespacesDep, RedisDep, TenantsDep
from spatialforge.apiserver.errors import NotFound
from spatialforge.apiserver.schemas import (
    KeyCreate, KeyCreated, KeyPublic, KeysPublic, PlanPublic, PlanUpdate, UsagePublic)
from spatialforge.apiserver.services import usage as usage_service

router = APIRouter(prefix="/v1/admin", tags=["admin"])


@router.post("/keys", status_code=201, response_model=KeyCreated)
async def create_key(_: AdminDep, tenants: TenantsDep, namespaces: NamespacesDep,
                     body: KeyCreate = Body(openapi_examples={"user": {"value": {"tenant": "acme", "name": "ci"}}})) -> dict:
    """Create a key; the response is the only time the key is shown."""
    issued = await tenants.create_key(body.tenant, role=body.role, live=body.live, name=body.name)
    if body.role == "user":
        await namespaces.apply_plan(body.tenant)
    record = next(k for k in await tenants.list_keys(body.tenant) if k["key_id"] == issued.key_id)
    return {**record, "key": issued.key}


@router.get("/keys", response_model=KeysPublic)
async def list_keys(_: AdminDep, tenants: TenantsDep,
                    tenant: Annotated[str | None, Query(max_length=40)] = None) -> dict:
    """Keys (never the keys themselves), optionally of one tenant."""
    keys = await tenants.list_keys(tenant)
    return {"data": keys, "count": len(keys)}


@router.delete("/keys/{key_id}", response_model=KeyPublic)
async def revoke_key(_: AdminDep, tenants: TenantsDep, key_id: str) -> dict:
    """Revoke a key at once."""
    record = await tenants.revoke(key_id)
    if record is None:
        raise NotFound("key not found")
    return record


@router.post("/keys/{key_id}/rotate", status_code=201, response_model=KeyCreated)
async def rotate_key(_: AdminDep, tenants: TenantsDep, key_id: str) -> dict:
    """A new key for the same tenant and role; the old one is revoked."""
    issued = await tenants.rotate(key_id)
    if issued is None:
        raise NotFound("active key not found")
    record = next(k for k in await tenants.list_keys(issued.tenant) if k["key_id"] == issued.key_id)
    return {**record, "key": issued.key}


@router.put("/tenants/{tenant}/plan", response_model=PlanPublic)
async def set_plan(_: AdminDep, tenants: TenantsDep, namespaces: NamespacesDep, tenant: str,
                   body: PlanUpdate = Body(openapi_examples={"pro": {"value": {"plan": "pro", "gpu_limit": 8}}})) -> dict:
    """Set a tenant's plan and optional per-tenant limits; the GPU limit goes to its namespace."""
    await tenants.set_plan(tenant, body.plan, units=body.monthly_units, rate=body.rate_per_minute,
                           gpus=body.gpu_limit)  # TenantError: 422 invalid_tenant
    # Concurrent jobs (whatever their GPU count): a per-tenant override, cleared when not given.
    await tenants.set_fields(tenant, jobs="" if body.concurrent_jobs is None else str(body.concurrent_jobs))
    return await usage_service.plan_public(tenants, tenant, await namespaces.apply_plan(tenant))


@router.get("/tenants/{tenant}/usage", response_model=UsagePublic)
async def tenant_usage(_: AdminDep, tenants: TenantsDep, redis: RedisDep, tenant: str) -> dict:
    """A tenant's month so far."""
    return await usage_service.usage(tenants, redis, tenant)
