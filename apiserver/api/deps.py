"""Dependencies as `Annotated` aliases, one per service the lifespan builds (main.py).

Each getter reads one attribute of `app.state`; tests swap any of them through
`app.dependency_overrides`. The API key is checked by `AuthMiddleware` before the body is
read; `ApiKeyDep` hands its principal to the route.
"""

from __future__ import annotations

from typing import Annotated

from fastapi import Depends, Request
from redis.asyncio import Redis

from spatialforge.apiserver.core.config import Settings, get_settings
from spatialforge.apiserver.core.metrics import Metrics
from spatialforge.apiserver.errors import Forbidden, Unauthorized
from spatialforge.apiserver.services.billing import Billing
from spatialforge.apiserver.services.job_reads import JobReads
from spatialforge.apiserver.services.job_submission import JobSubmission
from spatialforge.apiserver.services.job_terminal import JobTerminal
from spatialforge.apiserver.services.kube import JobCache, Kube
from spatialforge.apiserver.services.namespaces import Namespaces
from spatialforge.apiserver.services.quotas import Quotas
from spatialforge.apiserver.services.storage import Storage
from spatialforge.apiserver.services.sync import SyncService
from spatialforge.apiserver.services.tenants import Principal, Tenants
from spatialforge.apiserver.services.uploads import Uploads
from spatialforge.apiserver.services.webhooks import WebhookSender


async def app_settings(request: Request) -> Settings:
    """The settings `create_app` was given."""
    return getattr(request.app.state, "settings", None) or get_settings()


async def get_redis(request: Request) -> Redis:
    return request.app.state.redis


async def get_kube(request: Request) -> Kube:
    return request.app.state.kube


async def get_cache(request: Request) -> JobCache:
    return request.app.state.cache


async def get_storage(request: Request) -> Storage:
    return request.app.state.storage


async def get_tenants(request: Request) -> Tenants:
    return request.app.state.tenants


async def get_quotas(request: Request) -> Quotas:
    return request.app.state.quotas


async def get_namespaces(request: Request) -> Namespaces:
    return request.app.state.namespaces


async def get_billing(request: Request) -> Billing:
    return request.app.state.billing


async def get_webhooks(request: Request) -> WebhookSender:
    return request.app.state.webhooks


async def get_job_submission(request: Request) -> JobSubmission:
    return request.app.state.job_submission


async def get_job_reads(request: Request) -> JobReads:
    return request.app.state.job_reads


async def get_job_terminal(request: Request) -> JobTerminal:
    return request.app.state.job_terminal


async def get_uploads(request: Request) -> Uploads:
    return request.app.state.uploads


async def get_metrics(request: Request) -> Metrics:
    return request.app.state.metrics


async def get_sync(request: Request) -> SyncService:
    return request.app.state.sync


SettingsDep = Annotated[Settings, Depends(app_settings)]
RedisDep = Annotated[Redis, Depends(get_redis)]
KubeDep = Annotated[Kube, Depends(get_kube)]
CacheDep = Annotated[JobCache, Depends(get_cache)]
StorageDep = Annotated[Storage, Depends(get_storage)]
TenantsDep = Annotated[Tenants, Depends(get_tenants)]
QuotasDep = Annotated[Quotas, Depends(get_quotas)]
NamespacesDep = Annotated[Namespaces, Depends(get_namespaces)]
BillingDep = Annotated[Billing, Depends(get_billing)]
WebhooksDep = Annotated[WebhookSender, Depends(get_webhooks)]
JobSubmissionDep = Annotated[JobSubmission, Depends(get_job_submission)]
JobReadsDep = Annotated[JobReads, Depends(get_job_reads)]
JobTerminalDep = Annotated[JobTerminal, Depends(get_job_terminal)]
UploadsDep = Annotated[Uploads, Depends(get_uploads)]
MetricsDep = Annotated[Metrics, Depends(get_metrics)]
SyncDep = Annotated[SyncService, Depends(get_sync)]


async def current_principal(request: Request) -> Principal:
    """The caller `AuthMiddleware` authenticated (and charged) before the body was read."""
    principal = request.scope.get("state", {}).get("principal")
    if not isinstance(principal, Principal):  # a keyed route outside the middleware's paths: a bug, refuse
        raise Unauthorized("send an API key as X-API-Key or Authorization: Bearer",
                           headers={"WWW-Authenticate": "Bearer"})
    return principal


ApiKeyDep = Annotated[Principal, Depends(current_principal)]


async def admin_principal(principal: ApiKeyDep) -> Principal:
    if principal.role != "admin":
        raise Forbidden("this endpoint needs an admin key", code="admin_only")
    return principal


AdminDep = Annotated[Principal, Depends(admin_principal)]
