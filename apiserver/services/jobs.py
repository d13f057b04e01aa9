"""Jobs as custom resources: submit (plan, licence, prefix, size, quota, concurrency,
idempotency), read from the cache, cancel, sign result URLs (410 once past retention), delete
results, and react to terminal phases (slots, refunds, usage, completion webhooks).

Refunds: a job that never ran a runner container gets its units back, once per uid:
cancelled while Pending or Queued with no runner attempt finished, refused at admission
(invalid spec, more GPUs than the cluster, namespace or any node has), or failed fast
(unschedulable, image pull, container config, pod creation) on its first attempt. A job cancelled after a runner pod started keeps its charge (the work was started).
Services raise domain errors (`spatialforge.apiserver.errors`), never HTTP statuses."""

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

from spatialforge.apiserver import errors
from spatialforge.apiserver.core.config import Settings
from spatialforge.apiserver.core.metrics import Metrics
from spatialforge.apiserver.services import plans as plans_mod
from spatialforge.apiserver.services import webhooks as webhooks_mod
from spatialforge.apiserver.services.billing import Billing
from spatialforge.apiserver.services.kube import JobCache, Kube
from spatialforge.apiserver.services.namespaces import Namespaces
from spatialforge.apiserver.services.quotas import Decision, Quotas
from spatialforge.apiserver.services.storage import Storage, expiry, split_uri
from spatialforge.apiserver.services.uploads import Uploads
from spatialforge.apiserver.services.tenants import Tenants
from spatialforge.crds import DepthBatchSpec, ReconstructionJobSpec
from spatialforge.crds.constants import API_VERSION, LABEL_TENANT
from spatialforge.crds.kinds import BY_KIND
from spatialforge.crds.layout import output_base
from spatialforge.crds.v1alpha1 import conditions as cond

log = logging.getLogger("spatialforge.apiserver.jobs")

# Where the front end keeps a job's completion-webhook URL: on the resource itself.
ANNOTATION_WEBHOOK_URL = "apiserver.spatialforge.io/webhook-url"
# The hash of the request (kind, spec, webhook URL) an Idempotency-Key created the job with:
# a retry after the Redis record expired is compared with it.
ANNOTATION_REQUEST_HASH = "apiserver.spatialforge.io/request-hash"
# Units charged for the job (what a refund gives back).
ANNOTATION_UNITS = "apiserver.spatialforge.io/units"
PREFIXES = {kind: entry.code for kind, entry in BY_KIND.items()}
KIND_BY_PREFIX = {v: k for k, v in PREFIXES.items()}
TOMBSTONE_TTL = 7 * 86400
IDEMPOTENCY_TTL = 24 * 3600
REFUND_CLAIM_TTL = 40 * 86400
# Failures that mean no runner container ran (on a first attempt): refunded. Refused at
# admission (more GPUs than the cluster, the namespace or any node has; an invalid spec), or
# failed fast before a container started.
NEVER_RAN_FAILURES = frozenset({
    cond.REASON_INVALID_SPEC, cond.REASON_EXCEEDS_BUDGET, cond.REASON_EXCEEDS_NAMESPACE_LIMIT,
    cond.REASON_NO_FITTING_NODE, cond.REASON_UNSCHEDULABLE, cond.REASON_IMAGE_PULL, cond.REASON_CONTAINER_CONFIG,
    cond.REASON_POD_CREATION})

Spec = DepthBatchSpec | ReconstructionJobSpec


@dataclass
class Submitted:
    job: dict[str, Any]
    replayed: bool
    headers: dict[str, str]


def _parse(value: str | None) -> dt.datetime | None:
    return dt.datetime.fromisoformat(value.replace("Z", "+00:00")) if value else None


def summary(obj: dict[str, Any], phase: str | None = None, *, retention_days: int | None = None) -> dict[str, Any]:
    """The public view of a job; with `retention_days`, a Succeeded job's `expires_at`."""
    meta = obj["metadata"]
    status = obj.get("status") or {}
    progress = status.get("progress") or {}
    started, completed = status.get("startTime"), status.get("completionTime")
    duration = None
    if started and completed:
        duration = (_parse(completed) - _parse(started)).total_seconds()  # type: ignore[operator]
    name = meta["name"]
    out = {
        "id": name, "kind": obj["kind"], "phase": phase or status.get("phase") or "Pending",
        "reason": status.get("reason"), "message": status.get("message"),
        "progress": {"done": progress.get("done", 0), "total": progress.get("total", 0),
                     "stage": progress.get("stage", "")},
        "queue_position": status.get("queuePosition"), "estimated_start_time": status.get("estimatedStartTime"),
        "conditions": [{k: c.get(k, "") for k in ("type", "status", "reason", "message")}
                       for c in status.get("conditions") or []],
        "created_at": meta.get("creationTimestamp"), "started_at": started or None, "completed_at": completed or None,
        "duration_seconds": duration, "gpu_seconds": status.get("gpuSeconds"), "attempts": status.get("attempts"),
        "skipped_images": status.get("skippedImages"),
        "status_url": f"/v1/jobs/{name}", "results_url": f"/v1/jobs/{name}/results",
        "expires_at": None,
    }
    if retention_days and (phase or status.get("phase")) == "Succeeded":
        at = results_expire_at(obj, retention_days)
        out["expires_at"] = at.strftime("%Y-%m-%dT%H:%M:%SZ") if at else None
    return out


def results_expire_at(obj: dict[str, Any], days: int) -> dt.datetime | None:
    """When the results lifecycle rule may start removing this job's outputs: every output is
    written after its Job started, and the store expires an object `days` after it was written
    (rounded up to midnight UTC), so this is the earliest any output can go."""
    status = obj.get("status") or {}
    start = _parse(status.get("startTime")) or _parse(obj["metadata"].get("creationTimestamp"))
    return expiry(start, days) if start else None


def never_ran(obj: dict[str, Any], phase_before: str | None = None) -> bool:
    """Whether no runner container of this job ever ran (its units are refunded).

    Cancelled: `phase_before` (the phase when it was cancelled) was Pending or Queued, and at
    most one runner pod exists and none has finished (a pod never goes back to Pending).
    Failed: a fail-fast reason on the first attempt."""
    status = obj.get("status") or {}
    first_attempt = int(status.get("attempts") or 0) <= 1 and not float(status.get("gpuSeconds") or 0.0)
    if phase_before is not None:
        return phase_before in ("Pending", "Queued") and first_attempt
    return status.get("phase") == "Failed" and status.get("reason") in NEVER_RAN_FAILURES and first_attempt


class JobService:
    def __init__(self, *, settings: Settings, redis: Redis, kube: Kube, cache: JobCache, tenants: Tenants,
                 namespaces: Namespaces, quotas: Quotas, storage: Storage, uploads: Uploads, billing: Billing,
                 webhooks: webhooks_mod.WebhookSender, metrics: Metrics) -> None:
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
        self.namespaces = namespaces
        self.uploads = uploads

    def namespace(self, tenant: str) -> str:
        return self.namespaces.name(tenant)

    async def current_plan(self, tenant: str) -> plans_mod.Plan:
        # One Redis read; a payment grace that ran out is ended first (billing.end_grace, as the sweep does).
        return await self.billing.current_plan(tenant)

    def _summary(self, obj: dict[str, Any], phase: str | None = None) -> dict[str, Any]:
        return summary(obj, phase, retention_days=self.settings.results_retention_days)

    # --- submit ---------------------------------------------------------------------------
    def _check_spec(self, tenant: str, plan: plans_mod.Plan, spec: Spec) -> None:
        why = plans_mod.refusal(plan, spec)
        if why:
            raise errors.Forbidden(why, code="plan_forbids")
        why = plans_mod.licence_refusal(spec, research_mode=self.settings.research_mode)
        if why:
            raise errors.Forbidden(why, code="licence_non_commercial")
        uris = list(spec.inputs) if isinstance(spec, DepthBatchSpec) else [spec.input]
        for field, uri in [*(("inputs", u) for u in uris), ("output.uri", spec.output.uri)]:
            if not self.storage.owns(tenant, uri):
                raise errors.Forbidden(f"{field}: {uri!r} is outside your prefix {self.storage.tenant_prefix(tenant)}",
                                       code="outside_tenant_prefix")
        placement = spec.placement
        named = [field for field, value in (("placement.nodeSelector", placement.node_selector),
                                            ("placement.tolerations", placement.tolerations),
                                            ("placement.priorityClassName", placement.priority_class_name),
                                            ("queueName", spec.queue_name)) if value]
        if named:  # a queueName would hand the Job to Kueue, past the operator's GPU admission
            raise errors.Forbidden(f"{', '.join(named)}: set by the platform's operator, not through the API "
                                   "(nodeSelector, tolerations, priorityClassName and queueName are refused)",
                                   code="placement_forbidden", details={"fields": named})

    def _check_size(self, spec: Spec, resource: dict[str, Any]) -> None:
        """Refuse a resource the Kubernetes API would refuse (etcd keeps objects up to 1.5 MiB)
        before anything is charged; the estimate from the URIs alone avoids serialising a huge one."""
        limit = self.settings.max_spec_bytes
        uris = spec.inputs if isinstance(spec, DepthBatchSpec) else [spec.input]
        size = sum(len(u) + 3 for u in uris)
        if size <= limit:
            size = len(json.dumps(resource, separators=(",", ":")))
        if size > limit:
            raise errors.InvalidRequest(
                f"the job resource would be about {size:,} bytes; the limit is {limit:,} bytes (the Kubernetes API "
                f"stores objects up to 1.5 MiB, with room kept for status). Split the inputs over several jobs, "
                f"or name prefixes (\"s3://.../dir/\") instead of single objects",
                code="spec_too_large", details={"limit_bytes": limit, "size_bytes": size})

    async def submit(self, tenant: str, kind: str, spec: Spec, *, idempotency_key: str | None,
                     webhook_url: str | None) -> Submitted:
        plan = await self.current_plan(tenant)
        self._check_spec(tenant, plan, spec)
        if webhook_url:
            try:
                await webhooks_mod.check_target(webhook_url, self.settings.webhook_allow)
            except webhooks_mod.UnsafeTarget as exc:
                raise errors.InvalidRequest(str(exc), code="unsafe_webhook") from None
        body = spec.model_dump(by_alias=True, mode="json", exclude_none=True)
        ns = self.namespace(tenant)
        prefix = PREFIXES[kind]
        cost = plans_mod.units(spec)
        annotations = {ANNOTATION_UNITS: str(cost)}
        if webhook_url:
            annotations[ANNOTATION_WEBHOOK_URL] = webhook_url
        idem_key = body_hash = None
        if idempotency_key:
            digest = hashlib.sha256(f"{tenant}\0{idempotency_key}".encode()).hexdigest()
            name = f"{prefix}-{digest[:12]}"
            body_hash = hashlib.sha256(json.dumps([kind, body, webhook_url], sort_keys=True).encode()).hexdigest()
            annotations[ANNOTATION_REQUEST_HASH] = body_hash
            idem_key = f"idem:{tenant}:{digest}"
        else:
            name = f"{prefix}-{secrets.token_hex(6)}"
        resource = {"apiVersion": API_VERSION, "kind": kind,
                    "metadata": {"name": name, "namespace": ns, "labels": {LABEL_TENANT: tenant},
                                 "annotations": annotations},
                    "spec": body}
        self._check_size(spec, resource)
        if idem_key and body_hash:
            if not await self.redis.set(idem_key, f"{name}|{body_hash}", nx=True, ex=IDEMPOTENCY_TTL):
                return await self._replay(idem_key, ns, kind, body_hash)
            # No record: new, or the record expired (24 h) while the job (or its tombstone) lives on.
            earlier = await self._earlier(ns, name, kind)
            if earlier is not None:
                return await self._answer_earlier(idem_key, name, body_hash, *earlier)
        decision = await self._charge(tenant, ns, plan, name, cost)
        if not decision.allowed:
            if idem_key:
                await self.redis.delete(idem_key)
            self.metrics.refusals.labels(decision.reason).inc()
            if decision.reason == "concurrency":
                raise errors.RateLimited(
                    f"plan {plan.name!r} runs at most {plan.concurrent_jobs} unfinished jobs at once, whatever their "
                    "GPU count; wait for one to finish or cancel one", code="concurrent_jobs_limit",
                    headers=decision.headers, details={"limit": plan.concurrent_jobs})
            raise errors.QuotaExceeded(f"monthly quota of {plan.monthly_units} units reached ({cost} requested)",
                                       headers={**decision.headers, "Retry-After": str(decision.reset)},
                                       details={"limit": plan.monthly_units, "requested": cost})
        try:
            await self.namespaces.ensure(tenant, plan.gpu_limit)
            created = await self.kube.create(kind, ns, resource)
        except ApiException as exc:
            if exc.status == 409 and idem_key and body_hash:  # created by a request whose record expired
                await self.quotas.refund(tenant, cost)  # the slot (same name) stays the existing job's
                existing = await self.kube.read(kind, ns, name)
                if existing is not None:
                    return await self._answer_earlier(idem_key, name, body_hash, existing, None)
            await self._undo(tenant, name, cost, idem_key)
            if exc.status == 413 or (exc.status == 500 and "too large" in str(exc.body or "").lower()):
                raise errors.InvalidRequest(
                    f"the Kubernetes API refused the job resource as too large (limit {self.settings.max_spec_bytes:,}"
                    " bytes here); split the inputs over several jobs", code="spec_too_large",
                    details={"limit_bytes": self.settings.max_spec_bytes}) from None
            raise
        except BaseException:
            await self._undo(tenant, name, cost, idem_key)
            raise
        await self.cache.put(created)
        self.metrics.jobs.labels(kind, plan.name).inc()
        log.info("created %s %s/%s for tenant %s (%d units)", kind, ns, name, tenant, cost)
        try:  # the uploads this job reads are counted in the month's upload bytes
            await self.uploads.count_used(tenant, list(spec.inputs) if isinstance(spec, DepthBatchSpec) else [spec.input])
        except Exception:
            log.exception("counting the uploads of %s/%s failed; listing the uploads counts them", ns, name)
        return Submitted(self._summary(created), False, decision.headers)

    async def _charge(self, tenant: str, ns: str, plan: plans_mod.Plan, name: str, cost: int) -> Decision:
        """Units and a concurrency slot in one script; slots of jobs gone behind our back
        (deleted with kubectl) are pruned against the cache before a refusal stands."""
        async def check() -> Decision:
            return await self.quotas.check(f"quota:{tenant}", rate_limit=0, cost=cost, unit_limit=plan.monthly_units,
                                           tenant=tenant, slot=name, slot_limit=plan.concurrent_jobs)
        decision = await check()
        if not decision.allowed and decision.reason == "concurrency" and self.cache.ready():
            live = {o["metadata"]["name"] for o in self.cache.in_namespace(ns)
                    if (o.get("status") or {}).get("phase") not in ("Succeeded", "Failed", "Cancelled")}
            if await self.quotas.prune_slots(tenant, live):
                decision = await check()
        return decision

    async def _undo(self, tenant: str, name: str, cost: int, idem_key: str | None) -> None:
        """Give back what a submission took when it created nothing."""
        await self.quotas.refund(tenant, cost)
        await self.quotas.release_slot(tenant, name)
        if idem_key:
            await self.redis.delete(idem_key)

    async def _earlier(self, ns: str, name: str, kind: str) -> tuple[dict[str, Any] | None, dict[str, Any] | None] | None:
        """The job (or the tombstone of a cancelled one) an expired record's key created."""
        stone = await self.redis.get(f"tombstone:{ns}:{name}")
        if stone:  # cancelled (its resource may linger while the operator finalizes it)
            return None, json.loads(stone)
        obj = self.cache.get(ns, name)
        if obj is not None:
            return obj, None
        return None

    async def _answer_earlier(self, idem_key: str, name: str, body_hash: str, obj: dict[str, Any] | None,
                              stone: dict[str, Any] | None) -> Submitted:
        """Same request: the existing job. Another request: 409, the key is taken."""
        if obj is not None:
            first = (obj["metadata"].get("annotations") or {}).get(ANNOTATION_REQUEST_HASH, "")
        else:
            first = (stone or {}).pop("request_hash", "") or ""
        await self.redis.set(idem_key, f"{name}|{first}", ex=IDEMPOTENCY_TTL)
        if first != body_hash:
            raise errors.Conflict(f"this Idempotency-Key was already used for job {name} with a different request",
                                  code="idempotency_key_reused")
        job = self._summary(obj) if obj is not None else stone
        return Submitted(job or {}, True, {"Idempotent-Replayed": "true"})

    async def _replay(self, idem_key: str, ns: str, kind: str, body_hash: str) -> Submitted:
        value = await self.redis.get(idem_key) or "|"
        name, _, first_hash = value.partition("|")
        if first_hash != body_hash:
            raise errors.Conflict(f"this Idempotency-Key was already used for job {name} with a different request",
                                  code="idempotency_key_reused")
        for _ in range(50):  # the first request may still be creating it
            stone = await self.redis.get(f"tombstone:{ns}:{name}")
            if stone:  # created, then cancelled
                job = json.loads(stone)
                job.pop("request_hash", None)
                return Submitted(job, True, {"Idempotent-Replayed": "true"})
            obj = self.cache.get(ns, name) or await self.kube.read(kind, ns, name)
            if obj:
                return Submitted(self._summary(obj), True, {"Idempotent-Replayed": "true"})
            await asyncio.sleep(0.1)
        raise errors.Conflict("the first request with this key has not finished", code="idempotent_request_in_progress")

    # --- read -----------------------------------------------------------------------------
    async def _find(self, tenant: str, job_id: str) -> tuple[dict[str, Any] | None, dict[str, Any] | None]:
        """(live object, tombstone summary); a job of another tenant is never found."""
        ns = self.namespace(tenant)
        obj = self.cache.get(ns, job_id)
        if obj is not None and not obj["metadata"].get("deletionTimestamp"):
            return obj, None
        stone = await self.redis.get(f"tombstone:{ns}:{job_id}")
        if not stone:
            return None, None
        job = json.loads(stone)
        job.pop("request_hash", None)
        return None, job

    async def get(self, tenant: str, job_id: str) -> dict[str, Any]:
        obj, stone = await self._find(tenant, job_id)
        if obj is not None:
            return self._summary(obj)
        if stone is not None:
            return stone
        raise errors.NotFound("job not found")

    def list(self, tenant: str, *, kind: str | None, phase: str | None, limit: int, offset: int) -> dict[str, Any]:
        objs = self.cache.in_namespace(self.namespace(tenant))
        items = [self._summary(o) for o in objs]
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
            raise errors.NotFound("job not found")
        ns = self.namespace(tenant)
        current = summary(obj)
        if current["phase"] in ("Succeeded", "Failed", "Cancelled"):
            raise errors.Conflict(f"job is already {current['phase']}", code="already_finished")
        cancelled = summary(obj, phase="Cancelled")
        cancelled["reason"], cancelled["message"] = "CancelledByUser", "cancelled through the API"
        request_hash = (obj["metadata"].get("annotations") or {}).get(ANNOTATION_REQUEST_HASH)
        await self.redis.set(f"tombstone:{ns}:{job_id}", json.dumps({**cancelled, "request_hash": request_hash}),
                             ex=TOMBSTONE_TTL)
        await self.kube.delete(obj["kind"], ns, job_id)  # the operator's finalizer deletes the Job
        self.cache.forget(obj)
        await self.on_terminal({**obj, "status": {**(obj.get("status") or {}), "phase": "Cancelled"}},
                               phase_before=current["phase"])
        return cancelled

    def _results_base(self, obj: dict[str, Any], job_id: str) -> str:
        return output_base(obj["spec"]["output"]["uri"], obj["metadata"]["namespace"], job_id)

    async def _with_results(self, tenant: str, job_id: str) -> tuple[dict[str, Any], str | None]:
        """The tenant's job and its phase; 409 for a cancelled job (it has no results), else 404."""
        obj, stone = await self._find(tenant, job_id)
        if obj is None:
            if stone is not None:
                raise errors.Conflict("the job was cancelled", code="no_results")
            raise errors.NotFound("job not found")
        return obj, (obj.get("status") or {}).get("phase")

    async def results(self, tenant: str, job_id: str, ttl: int) -> dict[str, Any]:
        obj, phase = await self._with_results(tenant, job_id)
        if phase != "Succeeded":
            raise errors.Conflict(f"results exist once the job has Succeeded (now {phase or 'Pending'})",
                                  code="not_ready")
        deleted = await self.redis.get(f"results:deleted:{obj['metadata']['uid']}")
        if deleted:
            raise errors.Gone(f"the results were deleted on request at {deleted}", code="results_deleted")
        days = self.settings.results_retention_days
        expires = results_expire_at(obj, days)
        if expires is not None and dt.datetime.now(dt.UTC) >= expires:
            raise errors.Gone(f"the results expired at {expires:%Y-%m-%dT%H:%M:%SZ} (results are kept {days} days)",
                              code="results_expired")
        base = self._results_base(obj, job_id)
        bucket, prefix = split_uri(base + "/")
        files = []
        for item in await self.storage.list_under(base):
            files.append({"key": item["Key"][len(prefix):], "size": item["Size"],
                          "url": self.storage.sign_get(bucket, item["Key"], ttl)})
        return {"id": job_id, "expires_in": ttl, "files": files,
                "expires_at": expires.strftime("%Y-%m-%dT%H:%M:%SZ") if expires else None}

    async def delete_results(self, tenant: str, job_id: str) -> dict[str, Any]:
        """Delete a finished job's outputs now; its results then answer 410."""
        obj, phase = await self._with_results(tenant, job_id)
        if phase not in ("Succeeded", "Failed"):
            raise errors.Conflict(f"results can be deleted once the job has finished (now {phase or 'Pending'})",
                                  code="not_finished")
        count = await self.storage.delete_under(self._results_base(obj, job_id) + "/")
        at = dt.datetime.now(dt.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
        await self.redis.set(f"results:deleted:{obj['metadata']['uid']}", at,
                             ex=(self.settings.results_retention_days + 1) * 86400)
        log.info("deleted %d result objects of %s/%s on request", count, obj["metadata"]["namespace"], job_id)
        return {"id": job_id, "deleted_files": count, "deleted_at": at}

    # --- terminal phases ------------------------------------------------------------------
    async def on_terminal(self, obj: dict[str, Any], *, phase_before: str | None = None) -> None:
        """Called once per process per terminal transition (and for every terminal resource on
        the initial list after a restart); slots, refunds, usage and webhooks are once per uid.

        `phase_before`: the phase a job had when this process cancelled it (decides its refund)."""
        meta = obj["metadata"]
        tenant = (meta.get("labels") or {}).get(LABEL_TENANT)
        if not tenant:
            return
        status = obj.get("status") or {}
        phase = status.get("phase", "")
        try:
            await self.quotas.release_slot(tenant, meta["name"])
            if never_ran(obj, phase_before):
                await self._refund(tenant, obj)
            elif phase == "Succeeded" and skipped_units(obj):
                await self._refund(tenant, obj, units=skipped_units(obj), why="skipped images")
        except Exception:
            log.exception("releasing the slot or refunding %s/%s failed", meta.get("namespace"), meta.get("name"))
        try:
            await self.billing.report_usage(tenant, meta["uid"], float(status.get("gpuSeconds") or 0.0), phase)
        except Exception:
            log.exception("usage report for %s/%s failed; it is retried on the next start",
                          meta.get("namespace"), meta.get("name"))
        url = (meta.get("annotations") or {}).get(ANNOTATION_WEBHOOK_URL)
        if url:
            job = self._summary(obj)
            if phase == "Cancelled":
                job["reason"] = "CancelledByUser"
            try:  # recorded in Redis before the first attempt; the webhook worker delivers it
                await self.webhooks.enqueue(tenant, meta["uid"], url, webhooks_mod.event_body(obj, job))
            except Exception:
                log.exception("webhook for %s/%s could not be queued; a later start that lists the job "
                              "as finished queues it", meta.get("namespace"), meta.get("name"))

    async def _refund(self, tenant: str, obj: dict[str, Any], *, units: int | None = None,
                      why: str = "no runner ran") -> None:
        """Give a job's units (all of them, or `units`) back to the month it was charged in,
        once per uid."""
        meta = obj["metadata"]
        if units is None:
            units = charged_units(obj)
        if units <= 0 or not await self.redis.set(f"refund:job:{meta['uid']}", units, nx=True, ex=REFUND_CLAIM_TTL):
            return
        created = _parse(meta.get("creationTimestamp"))
        await self.quotas.refund(tenant, units, quotas_month(created), recorded=True)
        log.info("refunded %d units of %s/%s (%s)", units, meta.get("namespace"), meta.get("name"), why)


def charged_units(obj: dict[str, Any]) -> int:
    """The units a job was charged at submission (its annotation; 0 when unreadable)."""
    try:
        return max(0, int((obj["metadata"].get("annotations") or {}).get(ANNOTATION_UNITS) or 0))
    except ValueError:
        return 0


def skipped_units(obj: dict[str, Any]) -> int:
    """Units of the images a Succeeded DepthBatch skipped (`onInvalidImage: Skip`): the charged
    units in proportion to skipped / all images, rounded down, so a batch of single files gets
    back exactly one unit per skipped file and a prefix input is never refunded more than it cost."""
    status = obj.get("status") or {}
    try:
        skipped = int(status.get("skippedImages") or 0)
        total = int((status.get("progress") or {}).get("total") or 0)
    except (TypeError, ValueError):
        return 0
    if skipped <= 0 or total <= 0:
        return 0
    return charged_units(obj) * min(skipped, total) // total


def quotas_month(when: dt.datetime | None) -> str | None:
    return when.strftime("%Y-%m") if when else None
