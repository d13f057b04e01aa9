"""Jobs as custom resources: submit (plan, prefix, quota, idempotency), read from the cache,
cancel, sign result URLs, and react to terminal phases (usage, completion webhooks)."""

from __future__ import annotations

import asyncio
import datetime as dt
import hashlib
import json
import logging
import secrets
from dataclasses import dataclass
from typing import Any

from kubernetes_asyncio.client.exceptions import ApiException
from redis.asyncio import Redis

from spatialforge.apiserver.core.config import Settings
from spatialforge.apiserver.core.errors import ApiError, not_found
from spatialforge.apiserver.services import plans as plans_mod
from spatialforge.apiserver.services import webhooks as webhooks_mod
from spatialforge.apiserver.services.billing import Billing
from spatialforge.apiserver.services.kube import JobCache, Kube
from spatialforge.apiserver.services.quotas import Quotas
from spatialforge.apiserver.services.storage import Storage, split_uri
from spatialforge.apiserver.services.tenants import Tenants
from spatialforge.crds import DepthBatchSpec, ReconstructionJobSpec
from spatialforge.crds.constants import API_VERSION, LABEL_TENANT
from spatialforge.crds.kinds import BY_KIND
from spatialforge.crds.layout import output_base

log = logging.getLogger("spatialforge.apiserver.jobs")

# Where the front end keeps a job's completion-webhook URL: on the resource itself.
ANNOTATION_WEBHOOK_URL = "apiserver.spatialforge.io/webhook-url"
PREFIXES = {kind: entry.code for kind, entry in BY_KIND.items()}
KIND_BY_PREFIX = {v: k for k, v in PREFIXES.items()}
TOMBSTONE_TTL = 7 * 86400
IDEMPOTENCY_TTL = 24 * 3600

Spec = DepthBatchSpec | ReconstructionJobSpec


@dataclass
class Submitted:
    job: dict[str, Any]
    replayed: bool
    headers: dict[str, str]


def _iso(value: str | None) -> str | None:
    return value or None


def _parse(value: str | None) -> dt.datetime | None:
    return dt.datetime.fromisoformat(value.replace("Z", "+00:00")) if value else None


def summary(obj: dict[str, Any], phase: str | None = None) -> dict[str, Any]:
    meta = obj["metadata"]
    status = obj.get("status") or {}
    progress = status.get("progress") or {}
    started, completed = status.get("startTime"), status.get("completionTime")
    duration = None
    if started and completed:
        duration = (_parse(completed) - _parse(started)).total_seconds()  # type: ignore[operator]
    name = meta["name"]
    return {
        "id": name, "kind": obj["kind"], "phase": phase or status.get("phase") or "Pending",
        "reason": status.get("reason"), "message": status.get("message"),
        "progress": {"done": progress.get("done", 0), "total": progress.get("total", 0),
                     "stage": progress.get("stage", "")},
        "queue_position": status.get("queuePosition"), "estimated_start_time": status.get("estimatedStartTime"),
        "conditions": [{k: c.get(k, "") for k in ("type", "status", "reason", "message")}
                       for c in status.get("conditions") or []],
        "created_at": meta.get("creationTimestamp"), "started_at": _iso(started), "completed_at": _iso(completed),
        "duration_seconds": duration, "gpu_seconds": status.get("gpuSeconds"), "attempts": status.get("attempts"),
        "status_url": f"/v1/jobs/{name}", "results_url": f"/v1/jobs/{name}/results",
    }


class JobService:
    def __init__(self, *, settings: Settings, redis: Redis, kube: Kube, cache: JobCache, tenants: Tenants,
                 quotas: Quotas, storage: Storage, billing: Billing, webhooks: webhooks_mod.WebhookSender,
                 metrics: Any) -> None:
        self.settings = settings
        self.redis = redis
        self.kube = kube
        self.cache = cache
        self.tenants = tenants
        self.quotas = quotas
        self.storage = storage
        self.billing = billing
        self.webhooks = webhooks
        self.metrics = metrics

    def namespace(self, tenant: str) -> str:
        return f"{self.settings.namespace_prefix}{tenant}"

    async def apply_plan(self, tenant: str) -> plans_mod.Plan:
        """Write the tenant's GPU limit to its namespace annotation (what the operator reads)."""
        plan = await self.tenants.plan(tenant)
        self.kube._known_ns.pop(self.namespace(tenant), None)
        await self.kube.ensure_namespace(self.namespace(tenant), tenant, plan.gpu_limit)
        return plan

    async def current_plan(self, tenant: str) -> plans_mod.Plan:
        # Payment grace over: degrade now (the same path as the periodic sweep, billing.end_grace).
        await self.billing.end_grace(tenant, via="request")
        return await self.tenants.plan(tenant)

    # --- submit ---------------------------------------------------------------------------
    def _check_spec(self, tenant: str, plan: plans_mod.Plan, spec: Spec) -> None:
        why = plans_mod.refusal(plan, spec)
        if why:
            raise ApiError(403, "plan_forbids", why)
        uris = list(spec.inputs) if isinstance(spec, DepthBatchSpec) else [spec.input]
        for field, uri in [*((f"inputs", u) for u in uris), ("output.uri", spec.output.uri)]:
            if not self.storage.owns(tenant, uri):
                raise ApiError(403, "outside_tenant_prefix",
                               f"{field}: {uri!r} is outside your prefix {self.storage.tenant_prefix(tenant)}")
        placement = spec.placement
        if placement.node_selector or placement.tolerations or placement.priority_class_name or spec.queue_name:
            raise ApiError(403, "placement_forbidden",
                           "placement.nodeSelector/tolerations/priorityClassName and queueName are set by the operator, not the API")

    async def submit(self, tenant: str, kind: str, spec: Spec, *, idempotency_key: str | None,
                     webhook_url: str | None) -> Submitted:
        plan = await self.current_plan(tenant)
        self._check_spec(tenant, plan, spec)
        if webhook_url:
            try:
                await webhooks_mod.check_target(webhook_url, self.settings.webhook_allow)
            except webhooks_mod.UnsafeTarget as exc:
                raise ApiError(422, "unsafe_webhook", str(exc)) from None
        body = spec.model_dump(by_alias=True, mode="json", exclude_none=True)
        ns = self.namespace(tenant)
        prefix = PREFIXES[kind]
        idem_key = None
        if idempotency_key:
            digest = hashlib.sha256(f"{tenant}\0{idempotency_key}".encode()).hexdigest()
            name = f"{prefix}-{digest[:12]}"
            body_hash = hashlib.sha256(json.dumps([kind, body, webhook_url], sort_keys=True).encode()).hexdigest()
            idem_key = f"idem:{tenant}:{digest}"
            if not await self.redis.set(idem_key, f"{name}|{body_hash}", nx=True, ex=IDEMPOTENCY_TTL):
                return await self._replay(idem_key, ns, kind, body_hash)
        else:
            name = f"{prefix}-{secrets.token_hex(6)}"
        cost = plans_mod.units(spec)
        decision = await self.quotas.check(f"quota:{tenant}", rate_limit=0, cost=cost,
                                           unit_limit=plan.monthly_units, tenant=tenant)
        if not decision.allowed:
            if idem_key:
                await self.redis.delete(idem_key)
            self.metrics.refusals.labels("quota").inc()
            raise ApiError(429, "quota_exceeded",
                           f"monthly quota of {plan.monthly_units} units reached ({cost} requested)",
                           {**decision.headers, "Retry-After": str(decision.reset)})
        resource = {"apiVersion": API_VERSION, "kind": kind,
                    "metadata": {"name": name, "namespace": ns, "labels": {LABEL_TENANT: tenant},
                                 "annotations": {ANNOTATION_WEBHOOK_URL: webhook_url} if webhook_url else {}},
                    "spec": body}
        try:
            await self.kube.ensure_namespace(ns, tenant, plan.gpu_limit)
            created = await self.kube.create(kind, ns, resource)
        except BaseException:
            await self.quotas.refund(tenant, cost)
            if idem_key:
                await self.redis.delete(idem_key)
            raise
        await self.cache.put(created)
        self.metrics.jobs.labels(kind, plan.name).inc()
        log.info("created %s %s/%s for tenant %s (%d units)", kind, ns, name, tenant, cost)
        return Submitted(summary(created), False, decision.headers)

    async def _replay(self, idem_key: str, ns: str, kind: str, body_hash: str) -> Submitted:
        value = await self.redis.get(idem_key) or "|"
        name, _, first_hash = value.partition("|")
        if first_hash != body_hash:
            raise ApiError(422, "idempotency_key_reused", "this Idempotency-Key was used with a different request")
        for _ in range(50):  # the first request may still be creating it
            stone = await self.redis.get(f"tombstone:{ns}:{name}")
            if stone:  # created, then cancelled
                return Submitted(json.loads(stone), True, {"Idempotent-Replayed": "true"})
            obj = self.cache.get(ns, name) or await self.kube.read(kind, ns, name)
            if obj:
                return Submitted(summary(obj), True, {"Idempotent-Replayed": "true"})
            await asyncio.sleep(0.1)
        raise ApiError(409, "idempotent_request_in_progress", "the first request with this key has not finished")

    # --- read -----------------------------------------------------------------------------
    async def _find(self, tenant: str, job_id: str) -> tuple[dict[str, Any] | None, dict[str, Any] | None]:
        """(live object, tombstone summary); a job of another tenant is never found."""
        ns = self.namespace(tenant)
        obj = self.cache.get(ns, job_id)
        if obj is not None and not obj["metadata"].get("deletionTimestamp"):
            return obj, None
        stone = await self.redis.get(f"tombstone:{ns}:{job_id}")
        return None, (json.loads(stone) if stone else None)

    async def get(self, tenant: str, job_id: str) -> dict[str, Any]:
        obj, stone = await self._find(tenant, job_id)
        if obj is not None:
            return summary(obj)
        if stone is not None:
            return stone
        raise not_found()

    def list(self, tenant: str, *, kind: str | None, phase: str | None, limit: int, offset: int) -> dict[str, Any]:
        objs = self.cache.in_namespace(self.namespace(tenant))
        items = [summary(o) for o in objs]
        items = [j for j in items if (not kind or j["kind"] == kind) and (not phase or j["phase"] == phase)]
        items.sort(key=lambda j: (j["created_at"] or "", j["id"]), reverse=True)
        page = items[offset:offset + limit]
        nxt = offset + limit if offset + limit < len(items) else None
        return {"data": page, "count": len(items), "next_offset": nxt}

    async def cancel(self, tenant: str, job_id: str) -> dict[str, Any]:
        obj, stone = await self._find(tenant, job_id)
        if obj is None:
            if stone is not None:
                return stone
            raise not_found()
        ns = self.namespace(tenant)
        current = summary(obj)
        if current["phase"] in ("Succeeded", "Failed", "Cancelled"):
            raise ApiError(409, "already_finished", f"job is already {current['phase']}")
        cancelled = summary(obj, phase="Cancelled")
        cancelled["reason"], cancelled["message"] = "CancelledByUser", "cancelled through the API"
        await self.redis.set(f"tombstone:{ns}:{job_id}", json.dumps(cancelled), ex=TOMBSTONE_TTL)
        await self.kube.delete(obj["kind"], ns, job_id)  # the operator's finalizer deletes the Job
        self.cache.forget(obj)
        await self.on_terminal({**obj, "status": {**(obj.get("status") or {}), "phase": "Cancelled"}})
        return cancelled

    async def results(self, tenant: str, job_id: str, ttl: int) -> dict[str, Any]:
        obj, stone = await self._find(tenant, job_id)
        if obj is None:
            if stone is not None:
                raise ApiError(409, "no_results", "the job was cancelled")
            raise not_found()
        phase = (obj.get("status") or {}).get("phase")
        if phase != "Succeeded":
            raise ApiError(409, "not_ready", f"results exist once the job has Succeeded (now {phase or 'Pending'})")
        base = output_base(obj["spec"]["output"]["uri"], obj["metadata"]["namespace"], job_id)
        bucket, prefix = split_uri(base + "/")
        files = []
        for item in await self.storage.list_under(base):
            files.append({"key": item["Key"][len(prefix):], "size": item["Size"],
                          "url": self.storage.sign_get(bucket, item["Key"], ttl)})
        return {"id": job_id, "expires_in": ttl, "files": files}

    # --- terminal phases ------------------------------------------------------------------
    async def on_terminal(self, obj: dict[str, Any]) -> None:
        """Called once per process per terminal transition (and for every terminal resource on
        the initial list after a restart); usage and webhooks are once per uid in Redis."""
        meta = obj["metadata"]
        tenant = (meta.get("labels") or {}).get(LABEL_TENANT)
        if not tenant:
            return
        status = obj.get("status") or {}
        phase = status.get("phase", "")
        try:
            await self.billing.report_usage(tenant, meta["uid"], float(status.get("gpuSeconds") or 0.0), phase)
        except Exception:
            log.exception("usage report for %s/%s failed; it is retried on the next start",
                          meta.get("namespace"), meta.get("name"))
        url = (meta.get("annotations") or {}).get(ANNOTATION_WEBHOOK_URL)
        if url:
            job = summary(obj)
            if phase == "Cancelled":
                job["reason"] = "CancelledByUser"
            try:  # recorded in Redis before the first attempt; the webhook worker delivers it
                await self.webhooks.enqueue(tenant, meta["uid"], url, webhooks_mod.event_body(obj, job))
            except Exception:
                log.exception("webhook for %s/%s could not be queued; a later start that lists the job "
                              "as finished queues it", meta.get("namespace"), meta.get("name"))
