"""Jobs as custom resources: what the three job services share.

The services: job_submission.py (plan, licence, prefix, size, quota, concurrency,
idempotency, charging), job_reads.py (read from the cache, list, sign result URLs, 410 once past
retention, delete results) and job_terminal.py (cancel; on a terminal phase: slots, refunds,
usage, completion webhooks). Here: the annotations they agree on, the public view of a job
(`summary`), when results expire, which jobs are refunded, and `JobLookup`, how a tenant's job
is found. Services raise domain errors (`spatialforge.apiserver.errors`), never HTTP statuses.
"""

from __future__ import annotations

import datetime as dt
import json
from typing import Any

from redis.asyncio import Redis

from spatialforge.apiserver.core.config import Settings
from spatialforge.apiserver.services.kube import JobCache
from spatialforge.apiserver.services.namespaces import Namespaces
from spatialforge.apiserver.services.storage import expiry
from spatialforge.crds import DepthBatchSpec, ReconstructionJobSpec
from spatialforge.crds.kinds import BY_KIND
from spatialforge.crds.v1alpha1 import conditions as cond

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


def parse_time(value: str | None) -> dt.datetime | None:
    return dt.datetime.fromisoformat(value.replace("Z", "+00:00")) if value else None


def summary(obj: dict[str, Any], phase: str | None = None, *, retention_days: int | None = None) -> dict[str, Any]:
    """The public view of a job; with `retention_days`, a Succeeded job's `expires_at`."""
    meta = obj["metadata"]
    status = obj.get("status") or {}
    progress = status.get("progress") or {}
    started, completed = status.get("startTime"), status.get("completionTime")
    duration = None
    if started and completed:
        duration = (parse_time(completed) - parse_time(started)).total_seconds()  # type: ignore[operator]
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
        "skipped_images": status.get("skippedImages"), "units": charged_units(obj),
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
    start = parse_time(status.get("startTime")) or parse_time(obj["metadata"].get("creationTimestamp"))
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


class JobLookup:
    """A tenant's job: the live object from the watch-backed cache, else the tombstone summary
    of a cancelled one; a job of another tenant is never found."""

    def __init__(self, *, settings: Settings, redis: Redis, cache: JobCache, namespaces: Namespaces) -> None:
        self.settings = settings
        self.redis = redis
        self.cache = cache
        self.namespaces = namespaces

    def namespace(self, tenant: str) -> str:
        return self.namespaces.name(tenant)

    def summary(self, obj: dict[str, Any], phase: str | None = None) -> dict[str, Any]:
        """The public view, with `expires_at` from the results retention."""
        return summary(obj, phase, retention_days=self.settings.results_retention_days)

    def in_namespace(self, tenant: str) -> list[dict[str, Any]]:
        return self.cache.in_namespace(self.namespace(tenant))

    async def find(self, tenant: str, job_id: str) -> tuple[dict[str, Any] | None, dict[str, Any] | None]:
        """(live object, tombstone summary); (None, None) when neither exists."""
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
