"""Submitting a job: checks (plan, licence, tenant prefix, placement, size), charging (units and
a concurrency slot in one Redis script), creation, and Idempotency-Key replays.

A retried request with the same key answers the first job (`Idempotent-Replayed: true`), also
after its 24 h record expired (the job, or its tombstone, carries the request's hash); the same
key with another request is 409. A submission that creates nothing gives back what it took.
"""

from __future__ import annotations

import asyncio
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
from spatialforge.apiserver.services.jobs import (
    ANNOTATION_REQUEST_HASH,
    ANNOTATION_UNITS,
    ANNOTATION_WEBHOOK_URL,
    IDEMPOTENCY_TTL,
    PREFIXES,
    Spec,
    summary,
)
from spatialforge.apiserver.services.kube import JobCache, Kube
from spatialforge.apiserver.services.namespaces import Namespaces
from spatialforge.apiserver.services.quotas import Decision, Quotas
from spatialforge.apiserver.services.storage import Storage, split_uri
from spatialforge.apiserver.services.uploads import Uploads
from spatialforge.crds import DepthBatchSpec
from spatialforge.crds.v1alpha1.depthbatch import IMAGE_EXTENSIONS, is_image_name
from spatialforge.crds.constants import API_VERSION, LABEL_TENANT

log = logging.getLogger("spatialforge.apiserver.jobs")


@dataclass
class Submitted:
    job: dict[str, Any]
    replayed: bool
    headers: dict[str, str]


class JobSubmission:
    """POST /v1/depth-batches and /v1/reconstructions."""

    def __init__(self, *, settings: Settings, redis: Redis, kube: Kube, cache: JobCache, namespaces: Namespaces,
                 quotas: Quotas, storage: Storage, uploads: Uploads, billing: Billing, metrics: Metrics) -> None:
        self.settings = settings
        self.redis = redis
        self.kube = kube
        self.cache = cache
        self.namespaces = namespaces
        self.quotas = quotas
        self.storage = storage
        self.uploads = uploads
        self.billing = billing
        self.metrics = metrics

    def _summary(self, obj: dict[str, Any]) -> dict[str, Any]:
        return summary(obj, retention_days=self.settings.results_retention_days)

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

    async def _units(self, spec: Spec) -> int:
        """One unit per image a DepthBatch will read: a prefix input counts the images under it now
        (the runner reads the same names), so naming a folder never costs less than naming its
        files. A prefix holding no image is refused here rather than failing later."""
        if not isinstance(spec, DepthBatchSpec) or not any(u.endswith("/") for u in spec.inputs):
            return plans_mod.units(spec)
        names: set[str] = set()
        for uri in spec.inputs:
            if not uri.endswith("/"):
                names.add(uri)
                continue
            bucket, _ = split_uri(uri)
            found = {f"s3://{bucket}/{o['Key']}" for o in await self.storage.list_under(uri) if is_image_name(o["Key"])}
            if not found:
                raise errors.InvalidRequest(f"inputs: the prefix {uri!r} holds no image (names ending in "
                                            f"{', '.join(IMAGE_EXTENSIONS)}); upload the images first",
                                            code="input_prefix_empty", details={"input": uri})
            names |= found
        return len(names)

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
        plan = await self.billing.current_plan(tenant)  # a payment grace that ran out is ended first
        self._check_spec(tenant, plan, spec)
        if webhook_url:
            try:
                await webhooks_mod.check_target(webhook_url, self.settings.webhook_allow)
            except webhooks_mod.UnsafeTarget as exc:
                raise errors.InvalidRequest(str(exc), code="unsafe_webhook") from None
        body = spec.model_dump(by_alias=True, mode="json", exclude_none=True)
        ns = self.namespaces.name(tenant)
        prefix = PREFIXES[kind]
        cost = await self._units(spec)
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
