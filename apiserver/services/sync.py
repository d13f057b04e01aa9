"""Synchronous depth and measurement through a DepthPool (POST /v1/depth, POST /v1/measure).

Metering is the jobs' own: the plan's model sizes, the licence rule and one unit per image
from the month's quota, charged atomically by the quotas script before the pool is called
(the per-minute rate is the gate's, as for every /v1 path). Whatever produced no answer is
given back: a saturated or unreachable pool (503 + Retry-After), an image the server refuses
(the DepthBatch's own reason), a results write that failed.

Results of a JSON answer go to the tenant's results area,
`tenants/<tenant>/results/sync/<YYYY-MM-DD>/<request id>/{depth.png,preview.jpg}`, tagged for
the results' retention rule, and are returned as signed GET URLs.
"""

from __future__ import annotations

import base64
import binascii
import datetime as dt
import logging
import secrets
from dataclasses import dataclass, field
from typing import Any

import httpx
from redis.asyncio import Redis
from starlette.concurrency import run_in_threadpool

from spatialforge import depth_formats
from spatialforge.apiserver import errors
from spatialforge.apiserver.core.config import Settings
from spatialforge.apiserver.services import plans as plans_mod
from spatialforge.apiserver.services.billing import Billing
from spatialforge.apiserver.services.pool import DepthPools, PoolView
from spatialforge.apiserver.services.quotas import Quotas
from spatialforge.apiserver.services.storage import Storage, split_uri
from spatialforge.apiserver.services.tenants import Tenants
from spatialforge.crds.constants import RETENTION_RESULT, RETENTION_TAG

log = logging.getLogger("spatialforge.apiserver.sync")
COST = 1  # units per image


@dataclass
class SyncAnswer:
    """What the route sends: a JSON body, or raw bytes with a media type; plus headers."""

    body: dict[str, Any] | None = None
    content: bytes | None = None
    media_type: str = "application/json"
    headers: dict[str, str] = field(default_factory=dict)


class SyncService:
    def __init__(self, *, settings: Settings, redis: Redis, pools: DepthPools, quotas: Quotas, tenants: Tenants,
                 billing: Billing, storage: Storage) -> None:
        self.settings = settings
        self.redis = redis
        self.pools = pools
        self.quotas = quotas
        self.tenants = tenants
        self.billing = billing
        self.storage = storage

    # --- the image --------------------------------------------------------------------------
    async def read_object(self, tenant: str, uri: str) -> tuple[str, bytes]:
        """An object of the tenant's own prefix (an upload), at most sync_max_image_bytes."""
        if not self.storage.owns(tenant, uri):
            raise errors.Forbidden(f"uri: {uri!r} is outside your prefix {self.storage.tenant_prefix(tenant)}",
                                   code="outside_tenant_prefix")
        bucket, key = split_uri(uri)
        cap = self.settings.sync_max_image_bytes
        name = key.rsplit("/", 1)[-1] or "upload"

        def fetch() -> bytes | None:
            try:
                head = self.storage.client.head_object(Bucket=bucket, Key=key)
            except self.storage.client.exceptions.ClientError as exc:
                if exc.response.get("Error", {}).get("Code") in ("404", "NoSuchKey", "NotFound"):
                    return None
                raise
            if int(head.get("ContentLength") or 0) > cap:
                raise errors.PayloadTooLarge(f"{name}: {head['ContentLength']} bytes; images are limited to {cap} "
                                             "bytes here (use a DepthBatch for larger ones)", details={"limit": cap})
            return self.storage.client.get_object(Bucket=bucket, Key=key, Range=f"bytes=0-{cap}")["Body"].read()

        data = await run_in_threadpool(fetch)
        if data is None:
            raise errors.NotFound(f"uri: no object at {uri!r}", code="not_found")
        return name, data

    # --- admission and metering ---------------------------------------------------------------
    async def _admit(self, tenant: str, model: str | None) -> tuple[PoolView, dict[str, str]]:
        """The pool, after plan, licence and quota; one unit charged (headers: X-Quota-*)."""
        await self.billing.end_grace(tenant, via="request")
        plan = await self.tenants.plan(tenant)
        if model is not None:  # refuse what the plan or licence forbids before asking the pool
            self._check_model(plan, model)
        view = await self.pools.for_model(model)
        self._check_model(plan, view.size)
        decision = await self.quotas.check(f"quota:{tenant}", rate_limit=0, cost=COST, unit_limit=plan.monthly_units,
                                           tenant=tenant)
        if not decision.allowed:
            raise errors.QuotaExceeded(f"monthly quota of {plan.monthly_units} units reached ({COST} requested)",
                                       headers={**decision.headers, "Retry-After": str(decision.reset)},
                                       details={"limit": plan.monthly_units, "requested": COST})
        return view, decision.headers

    def _check_model(self, plan: plans_mod.Plan, size: str) -> None:
        why = plans_mod.size_refusal(plan, size)
        if why:
            raise errors.Forbidden(why, code="plan_forbids")
        why = plans_mod.size_licence_refusal(size, research_mode=self.settings.research_mode)
        if why:
            raise errors.Forbidden(why, code="licence_non_commercial")

    async def _call(self, tenant: str, model: str | None, path: str, params: dict[str, str], data: bytes,
                    accept: str) -> tuple[PoolView, httpx.Response, dict[str, str]]:
        """Admit, charge, call the pool; refund unless the server answered 2xx."""
        view, headers = await self._admit(tenant, model)
        ok = False
        try:
            r = await self.pools.call(view, tenant, path, params=params, content=data, accept=accept)
            if r.status_code >= 400:
                raise _server_error(r)
            ok = True
            return view, r, headers
        finally:
            if not ok:
                await self.quotas.refund(tenant, COST)

    # --- endpoints ----------------------------------------------------------------------------
    async def depth(self, tenant: str, name: str, data: bytes, *, model: str | None, fmt: str, preview: bool,
                    intrinsics: dict[str, float]) -> SyncAnswer:
        """fmt (spatialforge/depth_formats.py): json (results written, signed URLs), else the depth
        server's inline answer (png, preview, npy, float16) with its X-Depth-* headers."""
        params = {"name": name, "format": fmt, "preview": "1" if preview else "0",
                  **{k: repr(v) for k, v in intrinsics.items()}}
        accept = depth_formats.BY_NAME[fmt].media_type
        view, r, headers = await self._call(tenant, model, "/v1/depth", params, data, accept)
        if fmt != "json":
            passed = {k: v for k, v in r.headers.items() if k.lower() in depth_formats.PASSED_HEADERS}
            return SyncAnswer(content=r.content, media_type=accept, headers={**headers, **passed})
        try:
            meta = r.json()
            png = base64.b64decode(meta.pop("png16"), validate=True)
            jpeg = base64.b64decode(meta.pop("preview"), validate=True) if "preview" in meta else None
            urls = await self._store(tenant, png, jpeg)
        except (ValueError, KeyError, binascii.Error) as exc:
            await self.quotas.refund(tenant, COST)
            log.error("depth pool %s answered a malformed body: %s", view.ref, exc)
            raise errors.Unavailable("the depth pool answered a malformed body; nothing was charged",
                                     code="pool_error", headers={"Retry-After": "1"}) from None
        except BaseException:
            await self.quotas.refund(tenant, COST)
            raise
        return SyncAnswer(body={**_public_meta(meta), **urls}, headers=headers)

    async def measure(self, tenant: str, name: str, data: bytes, *, model: str | None, params: dict[str, str]) -> SyncAnswer:
        """Distance between two pixels (and its 95 % interval), computed by the depth server."""
        view, r, headers = await self._call(tenant, model, "/v1/measure", {"name": name, **params}, data,
                                            "application/json")
        try:
            body = r.json()
        except ValueError:
            await self.quotas.refund(tenant, COST)
            log.error("depth pool %s answered a measure with a body that is not JSON", view.ref)
            raise errors.Unavailable("the depth pool answered a malformed body; nothing was charged",
                                     code="pool_error", headers={"Retry-After": "1"}) from None
        return SyncAnswer(body=body, headers=headers)

    async def _store(self, tenant: str, png: bytes, jpeg: bytes | None) -> dict[str, Any]:
        """Write the PNG (and preview) under the tenant's results area; signed GET URLs."""
        day = dt.datetime.now(dt.UTC).strftime("%Y-%m-%d")
        request = secrets.token_hex(8)
        _, base = split_uri(f"{self.storage.tenant_prefix(tenant)}results/sync/{day}/{request}/")
        bucket, ttl = self.storage.bucket, self.settings.results_url_ttl_seconds
        tagging = f"{RETENTION_TAG}={RETENTION_RESULT}"
        files = [("depth.png", png, "image/png")] + ([("preview.jpg", jpeg, "image/jpeg")] if jpeg else [])

        def put() -> dict[str, Any]:
            out: dict[str, Any] = {"id": request, "results_prefix": f"s3://{bucket}/{base}", "expires_in": ttl}
            for fname, body, ctype in files:
                self.storage.client.put_object(Bucket=bucket, Key=base + fname, Body=body, ContentType=ctype,
                                               Tagging=tagging)
                field_name = "depth_url" if fname == "depth.png" else "preview_url"
                out[field_name] = self.storage.sign_get(bucket, base + fname, ttl)
            return out

        return await run_in_threadpool(put)


def _public_meta(meta: dict[str, Any]) -> dict[str, Any]:
    """The depth server's metadata as the API documents it (snake_case)."""
    names = {"model": "model", "backend": "backend", "metric": "metric", "units": "units", "scale": "scale",
             "width": "width", "height": "height", "inputWidth": "input_width", "inputHeight": "input_height",
             "focalLengthPx": "focal_length_px", "focalSource": "focal_source", "intrinsics": "intrinsics",
             "stats": "stats"}
    return {out: meta[key] for key, out in names.items() if key in meta}


def _server_error(r: httpx.Response) -> errors.ServiceError:
    """A 4xx/5xx of the depth server as the front end's error (the server's reason kept)."""
    try:
        body = r.json()
        code, message = str(body.get("error") or "invalid_request"), str(body.get("message") or "")
    except ValueError:
        code, message = "pool_error", ""
    if r.status_code == 413:
        return errors.PayloadTooLarge(message or "the image is too large", code=code)
    if r.status_code in (400, 422):
        return errors.InvalidRequest(message or "the depth server refused the request", code=code)
    if r.status_code == 406:  # e.g. float16 asked of a map past its range
        return errors.NotAcceptable(message or "the depth server cannot give that answer", code=code)
    log.error("depth pool server answered %s: %s", r.status_code, message or r.text[:200])
    return errors.Unavailable("the depth pool failed on this request; nothing was charged", code="pool_error",
                              headers={"Retry-After": "1"})
