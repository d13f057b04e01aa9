"""Reading jobs: one job, the tenant's list (from the watch-backed cache), signed result URLs
(409 before Succeeded, 410 once past retention or deleted on request), deleting results."""

from __future__ import annotations

import datetime as dt
import logging
from typing import Any

from redis.asyncio import Redis

from spatialforge.apiserver import errors
from spatialforge.apiserver.core.config import Settings
from spatialforge.apiserver.services.jobs import JobLookup, results_expire_at
from spatialforge.apiserver.services.storage import Storage, split_uri
from spatialforge.crds.layout import output_base

log = logging.getLogger("spatialforge.apiserver.jobs")


class JobReads:
    """GET /v1/jobs, /v1/jobs/{id}, /v1/jobs/{id}/results and DELETE /v1/jobs/{id}/results."""

    def __init__(self, *, settings: Settings, redis: Redis, storage: Storage, lookup: JobLookup) -> None:
        self.settings = settings
        self.redis = redis
        self.storage = storage
        self.lookup = lookup

    async def get(self, tenant: str, job_id: str) -> dict[str, Any]:
        obj, stone = await self.lookup.find(tenant, job_id)
        if obj is not None:
            return self.lookup.summary(obj)
        if stone is not None:
            return stone
        raise errors.NotFound("job not found")

    def list(self, tenant: str, *, kind: str | None, phase: str | None, limit: int, offset: int) -> dict[str, Any]:
        objs = self.lookup.in_namespace(tenant)
        items = [self.lookup.summary(o) for o in objs]
        items = [j for j in items if (not kind or j["kind"] == kind) and (not phase or j["phase"] == phase)]
        items.sort(key=lambda j: (j["created_at"] or "", j["id"]), reverse=True)
        page = items[offset:offset + limit]
        nxt = offset + limit if offset + limit < len(items) else None
        return {"data": page, "count": len(items), "next_offset": nxt}

    def _results_base(self, obj: dict[str, Any], job_id: str) -> str:
        return output_base(obj["spec"]["output"]["uri"], obj["metadata"]["namespace"], job_id)

    async def _with_results(self, tenant: str, job_id: str) -> tuple[dict[str, Any], str | None]:
        """The tenant's job and its phase; 409 for a cancelled job (it has no results), else 404."""
        obj, stone = await self.lookup.find(tenant, job_id)
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
