"""How a job ends: cancelled on request, or a terminal phase seen by the job cache. Either
way the concurrency slot is released, units are refunded where owed, GPU usage is reported and
the completion webhook is queued, each once per uid.

Refunds: a job that never ran a runner container gets its units back, once per uid:
cancelled while Pending or Queued with no runner attempt finished, refused at admission
(invalid spec, more GPUs than the cluster, namespace or any node has), or failed fast
(unschedulable, image pull, container config, pod creation) on its first attempt. A job
cancelled after a runner pod started keeps its charge (the work was started).
"""

from __future__ import annotations

import json
import logging
from typing import Any

from redis.asyncio import Redis

from spatialforge.apiserver import errors
from spatialforge.apiserver.services import webhooks as webhooks_mod
from spatialforge.apiserver.services.billing import Billing
from spatialforge.apiserver.services.jobs import (
    ANNOTATION_REQUEST_HASH,
    ANNOTATION_WEBHOOK_URL,
    REFUND_CLAIM_TTL,
    TOMBSTONE_TTL,
    JobLookup,
    charged_units,
    never_ran,
    parse_time,
    quotas_month,
    skipped_units,
    summary,
)
from spatialforge.apiserver.services.kube import JobCache, Kube
from spatialforge.apiserver.services.quotas import Quotas
from spatialforge.crds.constants import LABEL_TENANT

log = logging.getLogger("spatialforge.apiserver.jobs")


class JobTerminal:
    """DELETE /v1/jobs/{id}, and the job cache's listener for terminal phases (`on_terminal`)."""

    def __init__(self, *, redis: Redis, kube: Kube, cache: JobCache, lookup: JobLookup, quotas: Quotas,
                 billing: Billing, webhooks: webhooks_mod.WebhookSender) -> None:
        self.redis = redis
        self.kube = kube
        self.cache = cache
        self.lookup = lookup
        self.quotas = quotas
        self.billing = billing
        self.webhooks = webhooks

    async def cancel(self, tenant: str, job_id: str) -> dict[str, Any]:
        obj, stone = await self.lookup.find(tenant, job_id)
        if obj is None:
            if stone is not None:
                return stone
            raise errors.NotFound("job not found")
        ns = self.lookup.namespace(tenant)
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
            job = self.lookup.summary(obj)
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
        created = parse_time(meta.get("creationTimestamp"))
        await self.quotas.refund(tenant, units, quotas_month(created), recorded=True)
        log.info("refunded %d units of %s/%s (%s)", units, meta.get("namespace"), meta.get("name"), why)
