"""Hand small DepthBatches to a warm DepthPool instead of starting a Job (issue 14, section 4).

A DepthBatch is handed off when `poolHandoffMaxImages` (SPATIALFORGE_POOL_HANDOFF_MAX_IMAGES)
is above 0 and the batch names at most that many images (no prefixes, which would need
listing), one shard, no Kueue queue, and a pool with the same model has a ready endpoint and
at least the batch's GPUs per replica, is not backing off and may be managed by the operator:
in the batch's own namespace, or in the operator's (platform pools serve every tenant). The
admission pass takes such a batch out of the queue (the pool's GPUs are already counted in the
budget: it needs none of its own), and the replica runs the batch runner's own stage with its
loaded model: same inputs, outputs, manifest.

Exactly once:
1. The attempt (an id, the pool, the replica's URL) is written on the batch (annotation
   `spatialforge.io/pool-hand-off`, crds.pool.HandOffRecord) before the POST.
2. The replica runs each attempt once and answers a repeated POST of it from the first run;
   its outputs are staged under the attempt id (runner/serve/batches.py).
3. An operator restarted mid-hand-off finds the record without an outcome and posts the same
   attempt again; it never starts a second one.
4. The outcome is recorded as for Jobs (annotation, then status through derive): Succeeded
   RunByPool, or Failed InvalidInput as a runner would.
5. The results are fenced (runner/storage/staging.py): the replica publishes as
   `pool/<attempt>` only by creating the batch's claim object (If-None-Match) before the
   deadline sent with the POST (when this operator stops waiting); the Job's pods publish as
   `job` behind the same claim. The first claim wins for good, so of the pool attempt and the
   Job that replaces it at most one ever publishes: a late pool run answers 410 or 409 and
   writes nothing; a Job that finds the pool's claim answers with the pool's manifest.
6. A pool that answers 5xx, times out or cannot be reached: `failed` is set on the record
   (condition PoolHandOff=False HandOffFailed, a Warning event, the failed_pool metric), and
   the batch runs as a Job, never handed off again. The pool counts the failure; after
   `poolHandoffFailuresBeforeBackoff` in a row it is skipped for `poolHandoffBackoffSeconds`
   (its status: failedHandOffs, backOffUntil, condition HandOffBackOff).
"""

from __future__ import annotations

import asyncio
import datetime as dt
import logging
import random
import time
import uuid
from collections.abc import Callable
from typing import Any

import aiohttp
from pydantic import ValidationError

from spatialforge.crds import constants as c
from spatialforge.crds.kinds import DEPTH_BATCH
from spatialforge.crds.pool import (
    ANNOTATION_HAND_OFF,
    BATCHES_PATH,
    BatchHandOff,
    BatchRunError,
    BatchRunResult,
    HandOffRecord,
)
from spatialforge.crds.v1alpha1 import conditions as cond
from spatialforge.crds.v1alpha1.common import Phase
from spatialforge.crds.v1alpha1.depthbatch import DepthBatchSpec
from spatialforge.operator import admission, metrics
from spatialforge.operator.cache import Cache, Key
from spatialforge.operator.derive import Outcome
from spatialforge.operator.kube import Kube, NotFound
from spatialforge.operator.poolctl import PoolController
from spatialforge.operator.settings import OperatorSettings
from spatialforge.operator.status import now_iso

log = logging.getLogger(__name__)


class PoolFailed(Exception):
    """The pool did not run the batch (5xx, timeout, unreachable, refused it): a Job runs it."""


def eligible(spec: Any, max_images: int) -> bool:
    return (isinstance(spec, DepthBatchSpec) and 0 < len(spec.inputs) <= max_images and spec.shards == 1
            and not spec.queue_name and not spec.suspend and not any(u.endswith("/") for u in spec.inputs))


class HandOff:
    def __init__(self, kube: Kube, cache: Cache, pools: PoolController, settings: OperatorSettings,
                 done: Callable[[Key], None]) -> None:
        self.kube, self.cache, self.pools, self.settings, self.done = kube, cache, pools, settings, done
        self.running: dict[Key, asyncio.Task[None]] = {}

    def take(self, candidates: list[admission.Candidate]) -> list[admission.Candidate]:
        """Start (or resume) a hand-off for every waiting candidate a pool can run; return the others."""
        out = []
        for cand in candidates:
            if cand.key in self.running:
                continue  # being run by a pool: neither queued nor admitted
            if cand.admitted or cand.key[0] != DEPTH_BATCH.kind:
                out.append(cand)
                continue
            obj = self.cache.resources.get(cand.key)
            record = HandOffRecord.of(obj) if obj is not None else None
            if record is not None:
                if record.failed is None:  # posted by an operator that stopped before the answer
                    metrics.POOL_HANDOFFS.labels("resumed").inc()
                    self._start(cand.key, record, resumed=True)
                else:
                    out.append(cand)  # its hand-off failed: a Job runs it
                continue
            if self.settings.pool_handoff_max_images <= 0:
                out.append(cand)
                continue
            spec, _ = self.cache.spec_of(cand.key)
            target = self._pool_for(cand.key[1], spec) if eligible(spec, self.settings.pool_handoff_max_images) else None
            if target is None:
                out.append(cand)
                continue
            pool, url = target
            record = HandOffRecord(attempt=uuid.uuid4().hex[:16], pool=f"{pool[1]}/{pool[2]}", url=url,
                                   started=now_iso())
            self._start(cand.key, record, resumed=False)
        return out

    def _start(self, key: Key, record: HandOffRecord, *, resumed: bool) -> None:
        self.running[key] = asyncio.create_task(self._run(key, record, resumed=resumed), name=f"sf-handoff-{key[2]}")

    def _pool_for(self, namespace: str, spec: DepthBatchSpec) -> tuple[Key, str] | None:
        """(pool key, endpoint URL) of a ready pool that can run it and is not backing off."""
        for key in self.pools.pools:
            if key[1] not in (namespace, self.settings.namespace) or not self.pools.takes_hand_offs(key):
                continue
            res = self.pools.spec_of(key)
            urls = self.pools.urls.get(key) or []
            if res is None or not urls or res.spec.model != spec.model or res.spec.gpus_per_replica < spec.placement.gpus:
                continue
            return key, random.choice(urls)
        return None

    async def _run(self, key: Key, record: HandOffRecord, *, resumed: bool) -> None:
        pool_ns, _, pool_name = record.pool.partition("/")
        pool: Key = (self.pools.kind, pool_ns, pool_name)
        try:
            obj = self.cache.resources.get(key)
            spec, _ = self.cache.spec_of(key)
            if obj is None or not isinstance(spec, DepthBatchSpec):
                return
            if not resumed:
                await self._annotate(key, record)  # before the POST: a restarted operator resumes this attempt
            try:
                answer = await self._post(key, spec, record, resumed=resumed, uid=obj["metadata"].get("uid"))
            except PoolFailed as exc:
                await self._failed(key, obj, pool, record, str(exc))
                return
            self.pools.hand_off_succeeded(pool)
            gpus = self._gpus_per_replica(pool)
            if isinstance(answer, BatchRunResult):
                metrics.POOL_HANDOFFS.labels("succeeded").inc()
                await self._progress(key, answer.items)
                outcome = Outcome(phase=Phase.succeeded.value, reason=cond.REASON_RUN_BY_POOL,
                                  message=f"run by pool {record.pool} in {answer.seconds:.2f} s",
                                  completion_time=now_iso(), start_time=record.started, attempts=1,
                                  gpu_seconds=round(gpus * answer.seconds, 3), manifest_uri=answer.manifest_uri)
            else:
                metrics.POOL_HANDOFFS.labels("failed_input").inc()
                outcome = Outcome(phase=Phase.failed.value, reason=cond.REASON_INVALID_INPUT,
                                  message=(answer.message or "invalid input")[:1024],
                                  completion_time=now_iso(), start_time=record.started, attempts=1)
            patched = await self.kube.patch_resource(key[0], key[1], key[2], {"metadata": {
                "annotations": {c.ANNOTATION_OUTCOME: outcome.dumps()}}})
            self.cache.put_resource(patched)
        except NotFound:
            pass
        except Exception:
            log.exception("hand-off of %s/%s failed; it is retried on the next admission pass", key[1], key[2])
        finally:
            self.running.pop(key, None)
            self.done(key)

    async def _post(self, key: Key, spec: DepthBatchSpec, record: HandOffRecord, *,
                    resumed: bool, uid: str | None) -> BatchRunResult | BatchRunError:
        """The pool's answer: a result, or an invalid-input refusal; PoolFailed for anything else."""
        seconds = self.settings.pool_handoff_timeout_seconds
        body = BatchHandOff(namespace=key[1], name=key[2], attempt=record.attempt, spec=spec, uid=uid,
                            resumed=resumed, deadline=time.time() + seconds)
        timeout = aiohttp.ClientTimeout(total=seconds)
        try:
            async with aiohttp.ClientSession(timeout=timeout) as session, session.post(
                    record.url + BATCHES_PATH, data=body.model_dump_json(by_alias=True),
                    headers={"Content-Type": "application/json"}) as resp:
                status, text = resp.status, await resp.text()
        except TimeoutError:
            raise PoolFailed(f"pool {record.pool} ({record.url}) did not answer within "
                             f"{self.settings.pool_handoff_timeout_seconds:g} s") from None
        except aiohttp.ClientError as exc:
            raise PoolFailed(f"pool {record.pool} ({record.url}) could not be reached: "
                             f"{' '.join(str(exc).split()) or type(exc).__name__}") from None
        try:
            if status == 200:
                return BatchRunResult.model_validate_json(text)
            refusal = BatchRunError.model_validate_json(text)
        except ValidationError:
            raise PoolFailed(f"pool {record.pool} answered {status} with an unreadable body") from None
        if status == 422 and refusal.exit_code == c.EXIT_INVALID_INPUT:
            return refusal
        raise PoolFailed(f"pool {record.pool} answered {status} {refusal.error}: {refusal.message}"[:1024])

    async def _annotate(self, key: Key, record: HandOffRecord) -> None:
        patched = await self.kube.patch_resource(key[0], key[1], key[2], {"metadata": {
            "annotations": {ANNOTATION_HAND_OFF: record.dumps()}}})
        self.cache.put_resource(patched)

    async def _failed(self, key: Key, obj: dict[str, Any], pool: Key, record: HandOffRecord, why: str) -> None:
        """Recorded on the batch (which then runs as a Job), counted, and charged to the pool."""
        log.warning("hand-off of %s/%s to pool %s failed (%s): a Job runs it", key[1], key[2], record.pool, why)
        metrics.POOL_HANDOFFS.labels("failed_pool").inc()
        await self._annotate(key, record.model_copy(update={"failed": why}))
        await self.kube.event({**obj, "kind": key[0]}, "Warning", cond.REASON_HAND_OFF_FAILED,
                              f"{why}; a Job runs it", now_iso())
        await self.pools.hand_off_failed(pool, why)

    def _gpus_per_replica(self, pool: Key) -> int:
        res = self.pools.spec_of(pool)
        return res.spec.gpus_per_replica if res is not None else 0

    async def _progress(self, key: Key, n: int) -> None:
        """The progress a runner shard would have reported (done/total), written as shard 0."""
        shard = {"done": n, "total": n, "stage": "done",
                 "updatedAt": dt.datetime.now(dt.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")}
        await self.kube.patch_status(key[0], key[1], key[2], {"progress": {"shards": {"0": shard}}})
