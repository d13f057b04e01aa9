"""The admission loop: gathers candidates from the cache, asks `admission.decide`, creates
(or un-suspends) the admitted resources' Jobs, and keeps every other resource's verdict
(queue position, limit exceeded, no fitting node) for the status derivation.

One asyncio task runs passes, woken by events and at least every `admissionIntervalSeconds`;
reconcile workers pause while a pass creates Jobs, because Job creation is what users wait
for and status bookkeeping is not.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import logging
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING, Any

from spatialforge.aio import within
from spatialforge.operator import admission, children, metrics, nodefit
from spatialforge.operator.budget import BudgetWatch
from spatialforge.operator.cache import Cache, Key
from spatialforge.operator.derive import Outcome, Verdict
from spatialforge.operator.jobs import job_finished, parse_time
from spatialforge.operator.kube import AlreadyExists, Kube, NotFound
from spatialforge.operator.settings import OperatorSettings
from spatialforge.operator.workqueue import WorkQueue

if TYPE_CHECKING:
    from spatialforge.operator.handoff import HandOff
    from spatialforge.operator.poolctl import PoolController

log = logging.getLogger(__name__)


class Admitter:
    def __init__(self, kube: Kube, cache: Cache, settings: OperatorSettings, queue: WorkQueue, budget: BudgetWatch,
                 wakeup: asyncio.Event, ensure_identity: Callable[[str], Awaitable[None]],
                 forget_if_gone: Callable[[Key], Awaitable[bool]], *, pools: PoolController | None,
                 handoff: HandOff | None, node_fit_enabled: bool) -> None:
        """`wakeup` is shared with whoever may change a verdict (budget, pools, hand-offs): set,
        it starts a pass. `node_fit_enabled` is False when the operator may not list nodes."""
        self.kube, self.cache, self.settings, self.queue, self.budget = kube, cache, settings, queue, budget
        self.ensure_identity, self.forget_if_gone = ensure_identity, forget_if_gone
        self.wakeup = wakeup
        self.idle = asyncio.Event()
        self.idle.set()
        self.verdicts: dict[Key, Verdict] = {}
        self.admitting: set[Key] = set()
        self.avg_run_seconds = settings.avg_run_seconds
        self.node_fit_enabled = node_fit_enabled
        self._fit_memo: dict[Key, tuple[str, Any, int, str | None]] = {}
        self._nodes_seen = 0
        self._standing_memo: dict[Key, tuple[dict[str, Any], dict[str, Any] | None, Any]] = {}
        self._new: list[Key] = []  # resources the latest pass saw first
        self.pools = pools  # DepthPools: their replicas hold GPUs from the same budget
        self.handoff = handoff  # small DepthBatches run by a warm pool

    def poke(self) -> None:
        self.wakeup.set()

    def observe_run(self, seconds: float) -> None:
        """A Succeeded run's duration, for queue ETAs."""
        self.avg_run_seconds = 0.8 * self.avg_run_seconds + 0.2 * seconds

    def nodes_changed(self) -> None:
        self._nodes_seen += 1
        self.poke()

    async def run(self) -> None:
        while True:
            await within(self.wakeup.wait(), self.settings.admission_interval_seconds)
            await asyncio.sleep(0.02)  # let a burst of creations land in one pass
            self.wakeup.clear()
            try:
                await self.admit_pass()
            except Exception:
                log.exception("admission pass failed")
                await asyncio.sleep(1)

    def _no_fit(self, key: Key, spec: Any) -> str | None:
        if not self.node_fit_enabled:
            return None
        uid = self.cache.resources[key]["metadata"]["uid"]
        memo = self._fit_memo.get(key)
        if memo is not None and memo[0] == uid and memo[1] is spec and memo[2] == self._nodes_seen:
            return memo[3]
        placement = spec.placement
        result = nodefit.no_fit(
            list(self.cache.nodes.values()), gpus=placement.gpus, gpu_resource=self.settings.gpu_resource,
            node_selector={**self.settings.runner_node_selector, **placement.node_selector},
            tolerations=[*self.settings.runner_tolerations,
                         *(t.model_dump(by_alias=True, exclude_none=True) for t in placement.tolerations)])
        self._fit_memo[key] = (uid, spec, self._nodes_seen, result)
        return result

    def _standing(self, key: Key, obj: dict[str, Any]) -> tuple[str, Any, dict[str, Any] | None] | None:
        """What of a resource's standing does not change until the resource or its Job does
        (memoized on their identity: the cache stores a new dict for every new version).
        None: never a candidate; ("kueue", spec, None); ("gpu", spec, job)."""
        raw_job = self.cache.jobs.get(key)
        memo = self._standing_memo.get(key)
        if memo is not None and memo[0] is obj and memo[1] is raw_job:
            return memo[2]
        standing: tuple[str, Any, dict[str, Any] | None] | None = None
        spec, _ = self.cache.spec_of(key)
        if obj["metadata"].get("deletionTimestamp") or Outcome.of(obj) is not None or spec is None:
            pass  # deleted, finished, or invalid (the reconcile fails it as InvalidSpec)
        else:
            job = self.cache.job_of(key)
            if spec.queue_name:
                standing = ("kueue", spec, None) if job is None else None
            elif job is None and (obj.get("status") or {}).get("jobName"):
                pass  # its Job was deleted: the reconcile fails it as JobDeleted
            elif not job_finished(job):
                standing = ("gpu", spec, job)
        self._standing_memo[key] = (obj, raw_job, standing)
        return standing

    def seen(self, key: Key) -> bool:
        """Whether an admission pass has looked at this resource yet."""
        return key in self._standing_memo

    def candidates(self) -> tuple[list[admission.Candidate], list[Key]]:
        """Resources competing for GPUs, and Kueue-managed resources still without a Job."""
        out, kueue = [], []
        if len(self._standing_memo) > 2 * len(self.cache.resources) + 100:
            self._standing_memo = {k: v for k, v in self._standing_memo.items() if k in self.cache.resources}
        self._new = [k for k in self.cache.resources if k not in self._standing_memo]
        for key, obj in self.cache.resources.items():
            standing = self._standing(key, obj)
            if standing is None:
                continue
            what, spec, job = standing
            terminating = key[1] in self.cache.terminating
            if what == "kueue":
                if not spec.suspend and key not in self.admitting and not terminating:
                    kueue.append(key)
                continue
            admitted = key in self.admitting or (job is not None and not (job.get("spec") or {}).get("suspend"))
            if (spec.suspend or terminating) and not admitted:
                continue  # (a terminating namespace refuses new Jobs; what runs there still holds GPUs)
            out.append(admission.Candidate(
                key=key, namespace=key[1], priority=spec.priority,
                created=obj["metadata"].get("creationTimestamp", ""), demand=spec.gpu_demand, admitted=admitted,
                no_fit=None if admitted else self._no_fit(key, spec)))
        return out, kueue

    async def admit_pass(self) -> None:
        await self.budget.known.wait()
        quota = self.budget.quota
        limits = admission.Limits(quota.gpu_budget, dict(self.cache.namespace_limits), strategy=quota.strategy,
                                  nodes_autoscale=self.settings.nodes_autoscale,
                                  no_fit_window_seconds=self.settings.unschedulable_timeout_seconds)
        candidates, kueue = self.candidates()
        if self.handoff is not None:  # small DepthBatches a warm pool runs leave the queue
            candidates = self.handoff.take(candidates)
        if self.pools is not None:  # pools take their grant from what running Jobs leave, before queued Jobs
            candidates += self.pools.hold(limits, candidates)
        decision = admission.decide(candidates, limits, now=dt.datetime.now(dt.UTC),
                                    avg_run_seconds=self.avg_run_seconds)
        metrics.QUEUE_DEPTH.set(sum(1 for v in decision.verdicts.values() if v.position is not None))
        metrics.GPUS_IN_USE.set(decision.in_use)
        old = self.verdicts
        self.verdicts = decision.verdicts
        for key in set(old) | set(decision.verdicts):
            if old.get(key) != decision.verdicts.get(key):
                self.queue.add(key)
        for key in self._new:  # their first status waited for this pass (Reconciler.reconcile)
            self.queue.add(key)
        work = [(k, False) for k in decision.admit] + [(k, True) for k in kueue]
        if not work:
            return
        metrics.ADMISSIONS.inc(len(decision.admit))
        self.idle.clear()
        self.admitting.update(k for k, _ in work)
        sem = asyncio.Semaphore(self.settings.workers * 2)

        async def one(key: Key, for_kueue: bool) -> None:
            async with sem:
                try:
                    await self._admit(key, suspend=for_kueue)
                except NotFound:
                    if not await self.forget_if_gone(key):
                        log.warning("creating the Job of %s/%s/%s: something it needs is gone; retrying", *key)
                except Exception:
                    log.exception("creating the Job of %s/%s/%s failed", *key)
                finally:
                    self.admitting.discard(key)
                    self.queue.add(key)

        try:
            await asyncio.gather(*(one(k, q) for k, q in work))
        finally:
            self.idle.set()

    async def _admit(self, key: Key, *, suspend: bool) -> None:
        """Create the resource's Job (suspended for Kueue), or un-suspend it (resume)."""
        obj = self.cache.resources.get(key)
        if obj is None:
            return
        res = children.parse(obj)
        job = self.cache.job_of(key)
        await self.ensure_identity(key[1])
        if job is None:
            body = children.build_job(res, self.settings, suspend=suspend)
            try:
                job = await self.kube.create_job(body)
            except AlreadyExists:
                job = await self.kube.get_job(key[1], body["metadata"]["name"])
            created = parse_time(obj["metadata"].get("creationTimestamp"))
            if created:
                metrics.ADMISSION_SECONDS.observe((dt.datetime.now(dt.UTC) - created).total_seconds())
        elif (job.get("spec") or {}).get("suspend") and not suspend:
            job = await self.kube.patch_job(key[1], job["metadata"]["name"], {"spec": {"suspend": False}})
        self.cache.put_job(job)
