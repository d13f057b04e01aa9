"""The reconcile loop: workers take resource keys from the work queue and bring each resource
in line with the world (Job spec, status, fail fast, TTL, deletion).

Kopf's event handlers only feed the cache and enqueue keys. Every decision is recomputed from
current state: the status comes from `derive.derive` (pure), is written as a merge patch of
what changed, and the terminal outcome is kept in an annotation first, so a crash between
the two writes, or a status someone else wrote, is put right by the next reconcile.

No finalizer: the Job's owner reference lets the garbage collector delete the Job, and with
it the pods, when the resource goes, even while the operator is down; a finalizer was one more
write per resource before its Job could be created. Resources still carrying the finalizer of
earlier versions have it removed when they are deleted.

Rooms: `workqueue.py` (the queue), `budget.py` (quota ConfigMap watch), `admitter.py` and
`admission.py` (who gets GPUs), `derive.py` (the status and whether the Job must go),
`jobs.py` (what Jobs and pods say), `kube.py` (every API call). `app.py` builds and wires them.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import json
import logging
import time
from collections.abc import Awaitable, Callable
from typing import Any

from spatialforge.crds import constants as c
from spatialforge.crds.v1alpha1 import conditions as cond
from spatialforge.crds.v1alpha1.common import Phase
from spatialforge.operator import children, metrics
from spatialforge.operator.admitter import Admitter
from spatialforge.operator.cache import Cache, Key, owner_uid
from spatialforge.operator.derive import TERMINAL, Observed, Outcome, derive, gpu_ledger
from spatialforge.operator.jobs import (
    job_finished,
    parse_time,
    pod_seconds,
    pods_missing_since,
)
from spatialforge.operator.kube import ConflictError, Kube, NotFound
from spatialforge.operator.settings import OperatorSettings
from spatialforge.operator.status import now_iso, patch_for
from spatialforge.operator.workqueue import WorkQueue

log = logging.getLogger(__name__)
# Phases announced with an Event: work starting and ending. Pending and Queued are in the status
# (reason, queue position); an Event each was one more write per resource at admission.
EVENT_PHASES = frozenset({Phase.running.value, *TERMINAL})
RESYNC_SECONDS = 10.0  # resources with pods: GPU-seconds of running pods move with the clock


async def forget_if_gone(kube: Kube, cache: Cache, queue: WorkQueue, key: Key) -> bool:
    """Drop a resource the API server no longer has; True if it was dropped. Kopf's watch starts
    after the start-up listing, so a resource deleted in between (say, with its namespace) never
    gets a DELETED event; without this it would be retried forever."""
    try:
        await kube.get_resource(*key)
    except NotFound:
        obj = cache.resources.get(key)
        if obj is not None:
            cache.put_resource(obj, deleted=True)
            log.info("%s/%s/%s is gone; forgotten", *key)
        queue.forget(key)
        return True
    except Exception:
        return False
    return False


class Reconciler:
    def __init__(self, kube: Kube, cache: Cache, settings: OperatorSettings, queue: WorkQueue, admitter: Admitter,
                 forget: Callable[[Key], Awaitable[bool]]) -> None:
        self.kube, self.cache, self.settings, self.queue, self.admitter = kube, cache, settings, queue, admitter
        self.forget_if_gone = forget  # `forget_if_gone` bound to this cache and queue
        self.tasks: list[asyncio.Task[None]] = []

    def start(self) -> None:
        self.tasks = [asyncio.create_task(self._worker()) for _ in range(self.settings.workers)]
        self.tasks.append(asyncio.create_task(self._resync_loop()))

    async def stop(self) -> None:
        for t in self.tasks:
            t.cancel()
        await asyncio.gather(*self.tasks, return_exceptions=True)

    async def _worker(self) -> None:
        while True:
            key = await self.queue.get()
            await self.admitter.idle.wait()
            started = time.perf_counter()
            try:
                await self.reconcile(key)
            except (ConflictError, NotFound):
                if not await self.forget_if_gone(key):
                    self.queue.add_after(key, 0.2)
            except Exception:
                log.exception("reconcile of %s/%s/%s failed; retrying", *key)
                self.queue.add_after(key, 2.0)
            finally:
                metrics.RECONCILE_SECONDS.observe(time.perf_counter() - started)
                self.queue.done(key)

    async def _resync_loop(self) -> None:
        """Periodic pass over resources with pods (GPU-seconds move with the clock); every other
        re-check is event-driven or woken by its own timer (fail-fast windows, TTL)."""
        while True:
            await asyncio.sleep(RESYNC_SECONDS)
            for key in list(self.cache.pods):
                if key in self.cache.resources:
                    self.queue.add(key)
            self._update_phase_metrics()

    def _update_phase_metrics(self) -> None:
        counts: dict[tuple[str, str], int] = {}
        for (kind, _, _), obj in self.cache.resources.items():
            phase = (obj.get("status") or {}).get("phase") or Phase.pending.value
            counts[(kind, phase)] = counts.get((kind, phase), 0) + 1
        metrics.RESOURCES.clear()
        for (kind, phase), n in counts.items():
            metrics.RESOURCES.labels(kind=kind, phase=phase).set(n)

    # -- one resource ----------------------------------------------------------------------
    async def reconcile(self, key: Key) -> None:
        obj = self.cache.resources.get(key)
        if obj is None:  # deleted: the garbage collector deletes its Job (owner reference)
            self.admitter.verdicts.pop(key, None)
            self.queue.forget(key)
            return
        if obj["metadata"].get("deletionTimestamp"):
            if c.FINALIZER in (obj["metadata"].get("finalizers") or []):
                await self._release(key, obj)
            return
        spec, invalid = self.cache.spec_of(key)
        job, pods = self.cache.job_of(key), self.cache.pods_of(key)
        outcome = Outcome.of(obj)
        obj = await self._ledger_gone_pods(key, obj, spec, outcome)
        if job is not None and spec is not None and outcome is None and not job_finished(job):
            await self._sync_job_spec(spec, job)
            job = self.cache.job_of(key)
        failures: list[str] = []
        if job is not None and outcome is None:
            since = pods_missing_since(job, pods, self.settings)
            if since is not None and dt.datetime.now(dt.UTC) >= since:
                failures = await self.kube.job_failure_events(key[1], job["metadata"]["name"])
        now = dt.datetime.now(dt.UTC)
        derived = derive(Observed(obj, spec, invalid, job, pods, self.admitter.verdicts.get(key), failures),
                         self.settings, now)
        if derived.outcome is not None:  # terminal: keep the outcome where only the operator writes
            obj = await self._patch_meta(key, obj, {"annotations": {c.ANNOTATION_OUTCOME: derived.outcome.dumps()}})
            outcome = derived.outcome
            self.admitter.poke()
        if derived.stop_job and job is not None:  # after the outcome is kept: a crash in between is redone
            await self.kube.delete_job(key[1], job["metadata"]["name"])
        if not (derived.status.reason == cond.REASON_AWAITING_ADMISSION and not obj.get("status")
                and not self.admitter.seen(key)):  # a new resource: its first status waits for admission
            await self._write(key, obj, derived.status)
        if derived.recheck_at is not None:
            self.queue.add_at(key, derived.recheck_at)
        if outcome is not None:
            await self._after_terminal(key, obj, outcome)

    async def _patch_meta(self, key: Key, obj: dict[str, Any], meta_patch: dict[str, Any]) -> dict[str, Any]:
        patched = await self.kube.patch_resource(key[0], key[1], key[2], {"metadata": meta_patch})
        self.cache.put_resource(patched)
        return self.cache.resources.get(key, patched)

    async def _ledger_gone_pods(self, key: Key, obj: dict[str, Any], spec: Any, outcome: Outcome | None) -> dict[str, Any]:
        """Runner pods that are gone (suspend, eviction, pod GC) take their GPU-seconds with them:
        add them to the resource's ledger annotation before they are forgotten."""
        gone = self.cache.gone_pods.pop(key, None)
        if not gone or outcome is not None or spec is None:
            return obj
        ledger = gpu_ledger(obj)
        uid = obj["metadata"]["uid"]
        added = {}
        for pod_uid, pod in gone.items():
            if pod_uid in ledger or owner_uid(pod) != uid:
                continue
            end = parse_time(pod["metadata"].get("deletionTimestamp")) or dt.datetime.now(dt.UTC)
            added[pod_uid] = round(pod_seconds(pod, end) * spec.placement.gpus, 3)
        if not added:
            return obj
        value = json.dumps({**ledger, **added}, separators=(",", ":"))
        return await self._patch_meta(key, obj, {"annotations": {c.ANNOTATION_GPU_LEDGER: value}})

    async def _sync_job_spec(self, spec: Any, job: dict[str, Any]) -> None:
        """What the resource's spec says of a live Job: suspend, and the active deadline."""
        jspec = job.get("spec") or {}
        patch: dict[str, Any] = {}
        if spec.suspend and not jspec.get("suspend"):
            patch["suspend"] = True
        if spec.active_deadline_seconds != jspec.get("activeDeadlineSeconds"):
            patch["activeDeadlineSeconds"] = spec.active_deadline_seconds
        if patch:
            self.cache.put_job(await self.kube.patch_job(job["metadata"]["namespace"], job["metadata"]["name"],
                                                         {"spec": patch}))
            self.admitter.poke()

    async def _write(self, key: Key, obj: dict[str, Any], desired: Any) -> None:
        status = obj.get("status") or {}
        patch = patch_for(status, desired)
        if not patch:
            return
        old_phase = status.get("phase")
        new_phase = desired.phase.value if desired.phase else None
        if old_phase in TERMINAL and new_phase != old_phase or "gpuSeconds" in patch and old_phase in TERMINAL:
            metrics.STATUS_CORRECTIONS.labels(kind=key[0]).inc()
            log.warning("%s/%s/%s: status said %s, derived %s; put back", *key, old_phase, new_phase)
        updated = await self.kube.patch_status(key[0], key[1], key[2], patch)
        self.cache.put_resource(updated)
        if new_phase and new_phase != old_phase:
            metrics.TRANSITIONS.labels(kind=key[0], phase=new_phase).inc()
            if new_phase in EVENT_PHASES:
                warn = new_phase == Phase.failed.value
                await self.kube.event(updated, "Warning" if warn else "Normal", f"Phase{new_phase}",
                                      desired.message or new_phase, now_iso())
            if new_phase in TERMINAL:
                self.admitter.poke()
                if new_phase == Phase.succeeded.value and desired.start_time and desired.completion_time:
                    self.admitter.observe_run((desired.completion_time - desired.start_time).total_seconds())

    async def _after_terminal(self, key: Key, obj: dict[str, Any], outcome: Outcome) -> None:
        """ttlSecondsAfterFinished: delete the resource that long after it finished."""
        ttl = (obj.get("spec") or {}).get("ttlSecondsAfterFinished")
        done = parse_time(outcome.completion_time)
        if ttl is None or done is None:
            return
        when = done + dt.timedelta(seconds=ttl)
        if dt.datetime.now(dt.UTC) >= when:
            await self.kube.delete_resource(key[0], key[1], key[2], obj["metadata"]["uid"])
        else:
            self.queue.add_at(key, when)

    async def _release(self, key: Key, obj: dict[str, Any]) -> None:
        """A resource deleted with the finalizer of earlier versions: delete its Job (and, through
        it, its pods) as that finalizer promised, then remove the finalizer."""
        job = self.cache.job_of(key)
        name = job["metadata"]["name"] if job is not None else children.job_name(key[0], key[2], obj["metadata"]["uid"])
        await self.kube.delete_job(key[1], name)
        finalizers = [f for f in obj["metadata"].get("finalizers") or [] if f != c.FINALIZER]
        if len(finalizers) != len(obj["metadata"].get("finalizers") or []):
            try:
                await self.kube.patch_resource(key[0], key[1], key[2], {"metadata": {
                    "finalizers": finalizers or None, "resourceVersion": obj["metadata"]["resourceVersion"]}})
            except NotFound:
                pass
        self.admitter.verdicts.pop(key, None)
        self.queue.forget(key)
        self.admitter.poke()
