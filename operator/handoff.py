"""Hand small DepthBatches to a warm DepthPool instead of starting a Job (issue 14, section 4).

A DepthBatch is handed off when `poolHandoffMaxImages` (SPATIALFORGE_POOL_HANDOFF_MAX_IMAGES)
is above 0 and the batch names at most that many images (no prefixes, which would need
listing), one shard, no Kueue queue, and a pool with the same model has a ready endpoint and
at least the batch's GPUs per replica: in the batch's own namespace, or in the operator's
(platform pools serve every tenant). The admission pass takes such a batch out of the
queue (the pool's GPUs are already counted in the budget: it needs none of its own), the
operator POSTs it to a replica's /v1/batches, and the replica runs the batch runner's own
stage with its loaded model: same inputs, outputs, manifest. The operator then records the
outcome as it does for Jobs (annotation first, then status through derive): Succeeded with
the manifest, progress and GPU-seconds (the replica's GPUs x the run's seconds), or Failed
InvalidInput as a runner would. A replica that is unreachable, full or fails otherwise sends
the batch back to the ordinary path: a Job.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import logging
import random
from collections.abc import Callable
from typing import Any

import aiohttp

from spatialforge.crds import constants as c
from spatialforge.crds.kinds import DEPTH_BATCH
from spatialforge.crds.v1alpha1 import conditions as cond
from spatialforge.crds.v1alpha1.common import Phase
from spatialforge.crds.v1alpha1.depthbatch import DepthBatchSpec
from spatialforge.operator import admission
from spatialforge.operator.cache import Cache, Key
from spatialforge.operator.derive import Outcome
from spatialforge.operator.kube import Kube, NotFound
from spatialforge.operator.poolctl import PoolController
from spatialforge.operator.settings import OperatorSettings
from spatialforge.operator.status import now_iso

log = logging.getLogger(__name__)
REASON_POOL = "RunByPool"
TIMEOUT_SECONDS = 300.0


def eligible(spec: Any, max_images: int) -> bool:
    return (isinstance(spec, DepthBatchSpec) and 0 < len(spec.inputs) <= max_images and spec.shards == 1
            and not spec.queue_name and not spec.suspend and not any(u.endswith("/") for u in spec.inputs))


class HandOff:
    def __init__(self, kube: Kube, cache: Cache, pools: PoolController, settings: OperatorSettings,
                 done: Callable[[Key], None]) -> None:
        self.kube, self.cache, self.pools, self.settings, self.done = kube, cache, pools, settings, done
        self.running: dict[Key, asyncio.Task[None]] = {}

    def take(self, candidates: list[admission.Candidate]) -> list[admission.Candidate]:
        """Start a hand-off for every waiting candidate a pool can run; return the others."""
        if self.settings.pool_handoff_max_images <= 0:
            return candidates
        out = []
        for cand in candidates:
            if cand.key in self.running:
                continue  # being run by a pool: neither queued nor admitted
            if cand.admitted or cand.key[0] != DEPTH_BATCH.kind:
                out.append(cand)
                continue
            spec, _ = self.cache.spec_of(cand.key)
            target = self._pool_for(cand.key[1], spec) if eligible(spec, self.settings.pool_handoff_max_images) else None
            if target is None:
                out.append(cand)
                continue
            self.running[cand.key] = asyncio.create_task(self._run(cand.key, spec, *target))
        return out

    def _pool_for(self, namespace: str, spec: DepthBatchSpec) -> tuple[Key, str, int] | None:
        """(pool key, endpoint URL, its GPUs per replica) of a ready pool that can run it."""
        for key in self.pools.pools:
            if key[1] not in (namespace, self.settings.namespace):
                continue
            res = self.pools.spec_of(key)
            urls = self.pools.urls.get(key) or []
            if res is None or not urls or res.spec.model != spec.model or res.spec.gpus_per_replica < spec.placement.gpus:
                continue
            return key, random.choice(urls), res.spec.gpus_per_replica
        return None

    async def _run(self, key: Key, spec: DepthBatchSpec, pool: Key, url: str, gpus: int) -> None:
        obj = self.cache.resources.get(key)
        try:
            if obj is None:
                return
            started = now_iso()
            body = {"metadata": {"namespace": key[1], "name": key[2]},
                    "spec": obj.get("spec") or spec.model_dump(mode="json", by_alias=True)}
            timeout = aiohttp.ClientTimeout(total=TIMEOUT_SECONDS)
            try:
                async with aiohttp.ClientSession(timeout=timeout) as session:
                    async with session.post(f"{url}/v1/batches", json=body) as resp:
                        answer = await resp.json(content_type=None)
                        status = resp.status
            except (aiohttp.ClientError, TimeoutError, ValueError) as exc:
                log.warning("hand-off of %s/%s to pool %s/%s failed (%s): a Job runs it", key[1], key[2],
                            pool[1], pool[2], exc)
                return
            where = f"pool {pool[1]}/{pool[2]}"
            if status == 200:
                n = int(answer.get("items") or 0)
                await self._progress(key, n)
                outcome = Outcome(phase=Phase.succeeded.value, reason=REASON_POOL,
                                  message=f"run by {where} in {float(answer.get('seconds') or 0):.2f} s",
                                  completion_time=now_iso(), start_time=started, attempts=1,
                                  gpu_seconds=round(gpus * float(answer.get("seconds") or 0), 3),
                                  manifest_uri=answer.get("manifestUri"))
            elif status == 422 and answer.get("exitCode") == c.EXIT_INVALID_INPUT:
                outcome = Outcome(phase=Phase.failed.value, reason=cond.REASON_INVALID_INPUT,
                                  message=str(answer.get("message") or "invalid input")[:1024],
                                  completion_time=now_iso(), start_time=started, attempts=1)
            else:
                log.warning("pool %s answered %s for %s/%s (%s): a Job runs it", where, status, key[1], key[2],
                            answer.get("message"))
                return
            patched = await self.kube.patch_resource(key[0], key[1], key[2], {"metadata": {
                "annotations": {c.ANNOTATION_OUTCOME: outcome.dumps()}}})
            self.cache.put_resource(patched)
        except NotFound:
            pass
        except Exception:
            log.exception("hand-off of %s/%s failed: a Job runs it", key[1], key[2])
        finally:
            self.running.pop(key, None)
            self.done(key)

    async def _progress(self, key: Key, n: int) -> None:
        """The progress a runner shard would have reported (done/total), written as shard 0."""
        shard = {"done": n, "total": n, "stage": "done",
                 "updatedAt": dt.datetime.now(dt.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")}
        await self.kube.patch_status(key[0], key[1], key[2], {"progress": {"shards": {"0": shard}}})
