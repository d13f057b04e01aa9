"""The DepthPool controller: pools and their Deployments in a small cache of their own, a work
queue, and the reconcile that writes the Service, the Deployment (replicas as the budget
grants) and the pool's status.

The budget is shared with Jobs: the admission pass (admitter.py) calls `hold`, which grants
the pools their replicas first (pool.grant) and hands the held GPUs back as admitted
candidates, so Jobs are admitted only from what pools leave. A pool the operator may not
manage (403 on its Deployment or Service) holds none.

Hand-offs (handoff.py) report each failure here: after `poolHandoffFailuresBeforeBackoff`
in a row the pool takes no hand-off until `backOffUntil` (status, condition HandOffBackOff).
"""

from __future__ import annotations

import asyncio
import datetime as dt
import logging
from collections.abc import Awaitable, Callable
from typing import Any

from kubernetes_asyncio.client.rest import ApiException
from pydantic import ValidationError

from spatialforge.aio import cancel_and_wait
from spatialforge.crds.kinds import DEPTH_POOL
from spatialforge.crds.pool import SERVICE_LABEL
from spatialforge.crds.v1alpha1 import depthpool as dp
from spatialforge.crds.v1alpha1.common import Condition
from spatialforge.crds.v1alpha1.depthpool import DepthPool, DepthPoolStatus
from spatialforge.operator import admission, pool
from spatialforge.operator.cache import Key, newer, slim
from spatialforge.operator.kube import AlreadyExists, ConflictError, Kube, NotFound
from spatialforge.operator.settings import OperatorSettings
from spatialforge.operator.status import model_patch, now_iso, set_condition
from spatialforge.operator.workqueue import WorkQueue

log = logging.getLogger(__name__)
RESYNC_SECONDS = 10.0


Cond = tuple[str, str, str]  # (status, reason, message)


def pool_key(obj: dict[str, Any]) -> Key:
    return (DEPTH_POOL.kind, obj["metadata"]["namespace"], obj["metadata"]["name"])


def _iso(ts: dt.datetime) -> str:
    return ts.astimezone(dt.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


class PoolController:
    kind = DEPTH_POOL.kind

    def __init__(self, kube: Kube, settings: OperatorSettings, poke_admission: Callable[[], None],
                 ensure_identity: Callable[[str], Awaitable[None]]) -> None:
        self.kube, self.settings, self.poke_admission = kube, settings, poke_admission
        self.ensure_identity = ensure_identity  # the runner service account the replicas run as
        self.pools: dict[Key, dict[str, Any]] = {}
        self.deployments: dict[Key, dict[str, Any]] = {}  # by the owning pool's key
        self.grants: dict[Key, pool.Grant] = {}
        self.urls: dict[Key, list[str]] = {}  # ready endpoints (http://ip:port), for hand-offs
        self.forbidden: set[Key] = set()  # pools the operator may not manage (403): no GPUs, no hand-offs
        self.failed_hand_offs: dict[Key, int] = {}  # in a row
        self.back_off_until: dict[Key, dt.datetime] = {}
        self.queue = WorkQueue()
        self.tasks: list[asyncio.Task[None]] = []

    # -- cache ------------------------------------------------------------------------------
    def put_pool(self, obj: dict[str, Any], deleted: bool = False) -> Key:
        obj = slim(obj)
        key = pool_key(obj)
        old = self.pools.get(key)
        if deleted:
            self.pools.pop(key, None)
            for table in (self.grants, self.urls, self.failed_hand_offs, self.back_off_until):
                table.pop(key, None)
            self.forbidden.discard(key)
        elif newer(obj, old):
            self.pools[key] = obj
        if deleted or old is None or old["metadata"].get("generation") != obj["metadata"].get("generation"):
            self.poke_admission()  # what it asks for may have changed
        self.queue.add(key)
        return key

    def put_deployment(self, obj: dict[str, Any], deleted: bool = False) -> Key | None:
        name = (obj["metadata"].get("labels") or {}).get(pool.LABEL_POOL)
        if not name:
            return None
        key = (self.kind, obj["metadata"]["namespace"], name)
        obj = slim(obj, drop_spec_keys=("template",))
        if deleted:
            if (self.deployments.get(key) or {}).get("metadata", {}).get("uid") == obj["metadata"].get("uid"):
                self.deployments.pop(key, None)
        elif newer(obj, self.deployments.get(key)):
            self.deployments[key] = obj
        self.queue.add(key)
        return key

    def endpoints_changed(self, obj: dict[str, Any]) -> None:
        """An EndpointSlice of some Service changed: re-count the pool's, if it is one."""
        service = (obj["metadata"].get("labels") or {}).get(SERVICE_LABEL, "")
        for key in self.pools:
            if key[1] == obj["metadata"]["namespace"] and pool.child_name(key[2]) == service:
                self.queue.add(key)

    def spec_of(self, key: Key) -> DepthPool | None:
        obj = self.pools.get(key)
        if obj is None:
            return None
        try:
            return DepthPool.model_validate({**obj, "kind": self.kind})
        except ValidationError:
            return None

    # -- the budget (called by the admission pass) --------------------------------------------
    def hold(self, limits: admission.Limits, candidates: list[admission.Candidate]) -> list[admission.Candidate]:
        """Grant pools their replicas from what running Jobs leave; return the pools' GPUs as
        admitted candidates for admission.decide to count."""
        jobs_in_use = sum(c.demand for c in candidates if c.admitted)
        jobs_ns: dict[str, int] = {}
        for c in candidates:
            if c.admitted:
                jobs_ns[c.namespace] = jobs_ns.get(c.namespace, 0) + c.demand
        asks = []
        for key, obj in self.pools.items():
            res = self.spec_of(key)
            if res is None or obj["metadata"].get("deletionTimestamp") or key in self.forbidden:
                continue  # (a pool the operator may not manage runs nothing: it holds no GPUs)
            asks.append(pool.Ask(key, key[1], obj["metadata"].get("creationTimestamp", ""),
                                 res.spec.wanted_replicas, res.spec.gpus_per_replica))
        grants = pool.grant(asks, global_budget=limits.global_budget, namespace_limits=limits.namespace_limits,
                            jobs_in_use=jobs_in_use, jobs_ns_use=jobs_ns)
        for key, g in grants.items():
            if self.grants.get(key) != g:
                self.grants[key] = g
                self.queue.add(key)
        held = []
        for ask in asks:
            g = grants[ask.key]
            if g.replicas and ask.gpus_per_replica:
                held.append(admission.Candidate(key=ask.key, namespace=ask.namespace, priority=0, created=ask.created,
                                                demand=g.replicas * ask.gpus_per_replica, admitted=True))
        return held

    # -- loop -------------------------------------------------------------------------------
    def start(self, workers: int = 2) -> None:
        self.tasks = [asyncio.create_task(self._worker()) for _ in range(workers)]
        self.tasks.append(asyncio.create_task(self._resync()))

    async def stop(self) -> None:
        await cancel_and_wait(self.tasks)

    # -- hand-offs (called by handoff.py) -------------------------------------------------------
    def takes_hand_offs(self, key: Key) -> bool:
        """Whether a batch may be handed to this pool now (managed, not backing off)."""
        until = self.back_off_until.get(key)
        return key not in self.forbidden and (until is None or dt.datetime.now(dt.UTC) >= until)

    def hand_off_succeeded(self, key: Key) -> None:
        if self.failed_hand_offs.pop(key, 0) or self.back_off_until.pop(key, None):
            self.queue.add(key)

    async def hand_off_failed(self, key: Key, why: str) -> None:
        """Count a failure; at the limit the pool backs off (its status says until when)."""
        n = self.failed_hand_offs[key] = self.failed_hand_offs.get(key, 0) + 1
        if n >= self.settings.pool_handoff_failures_before_backoff:
            seconds = self.settings.pool_handoff_backoff_seconds
            self.back_off_until[key] = dt.datetime.now(dt.UTC) + dt.timedelta(seconds=seconds)
            obj = self.pools.get(key)
            if obj is not None:
                await self.kube.event({**obj, "kind": self.kind}, "Warning", dp.REASON_HANDOFFS_FAILING,
                                      f"{n} hand-offs in a row failed (last: {why}); no hand-off for {seconds:g} s",
                                      now_iso())
            self.queue.add_after(key, seconds)  # the back-off ends in the status too
        self.queue.add(key)

    async def _resync(self) -> None:
        """Endpoint counts and a deleted Service are caught up with this often."""
        while True:
            await asyncio.sleep(RESYNC_SECONDS)
            for key in list(self.pools):
                self.queue.add(key)

    async def _worker(self) -> None:
        while True:
            key = await self.queue.get()
            try:
                await self.reconcile(key)
            except (ConflictError, NotFound):
                self.queue.add_after(key, 0.5)
            except Exception:
                log.exception("reconcile of pool %s/%s failed; retrying", key[1], key[2])
                self.queue.add_after(key, 2.0)
            finally:
                self.queue.done(key)

    # -- one pool ---------------------------------------------------------------------------
    async def reconcile(self, key: Key) -> None:
        obj = self.pools.get(key)
        if obj is None or obj["metadata"].get("deletionTimestamp"):
            return  # the Deployment and Service go with it (owner references)
        res = self.spec_of(key)
        if res is None:
            invalid = ("False", "InvalidSpec", "the spec does not validate")
            await self._write_status(key, obj, DepthPoolStatus(reason=invalid[1], message=invalid[2]),
                                     ready=invalid, limited=None)
            return
        g = self.grants.get(key)
        current = self.deployments.get(key)
        if g is None:  # the admission pass has not looked at this pool yet
            self.poke_admission()
            replicas = int((current or {}).get("spec", {}).get("replicas") or 0)
        else:
            replicas = g.replicas
        try:
            await self.ensure_identity(key[1])
            await self._ensure_service(res)
            current = await self._ensure_deployment(key, res, current, replicas)
        except ApiException as exc:
            if exc.status != 403:
                raise
            await self._forbidden(key, obj, exc)
            return
        if key in self.forbidden:  # allowed again: it may ask for GPUs again
            self.forbidden.discard(key)
            self.poke_admission()
        name = pool.child_name(key[2])
        slices = await self.kube.list_endpoint_slices(key[1], f"{SERVICE_LABEL}={name}")
        self.urls[key] = pool.ready_urls(slices)
        dstat = (current or {}).get("status") or {}
        ready = int(dstat.get("readyReplicas") or 0)
        running = int(dstat.get("replicas") or 0)
        if replicas == 0:
            ready_c = ("False", dp.REASON_NO_REPLICAS, "the pool runs no replicas")
        elif ready >= replicas and running <= replicas:
            ready_c = ("True", dp.REASON_ALL_READY, f"{ready} of {replicas} replicas ready")
        else:
            ready_c = ("False", dp.REASON_SCALING, f"{ready} of {replicas} replicas ready, {running} running")
        if g is None:
            limited = ("Unknown", dp.REASON_AWAITING_BUDGET, "the GPU budget has not been applied yet")
        elif g.limited:
            limited = ("True", g.reason, g.message)
        else:
            limited = ("False", dp.REASON_WITHIN_BUDGET, g.message)
        head = limited if limited[0] == "True" else ready_c
        status = DepthPoolStatus(replicas=replicas, ready_replicas=ready, wanted_replicas=res.spec.wanted_replicas,
                                 selector=pool.selector(key[2]), gpus=replicas * res.spec.gpus_per_replica,
                                 endpoints=len(self.urls[key]), service=name, reason=head[1], message=head[2])
        await self._write_status(key, obj, status, ready=ready_c, limited=limited)

    async def _forbidden(self, key: Key, obj: dict[str, Any], exc: ApiException) -> None:
        """The operator may not manage this pool: it runs nothing and holds no GPUs; tried again later."""
        message = (f"the operator may not create the pool's Deployment or Service in namespace {key[1]} "
                   f"(the chart grants that in the operator's own namespace): {exc.reason}")
        if key not in self.forbidden:
            self.forbidden.add(key)
            self.urls.pop(key, None)
            self.poke_admission()  # its grant goes back to the budget
        forbidden = ("False", dp.REASON_FORBIDDEN, message)
        await self._write_status(key, obj, DepthPoolStatus(service=pool.child_name(key[2]), selector=pool.selector(key[2]),
                                                           reason=dp.REASON_FORBIDDEN, message=message),
                                 ready=forbidden, limited=forbidden)
        self.queue.add_after(key, 60.0)

    async def _ensure_service(self, res: DepthPool) -> None:
        body = pool.service(res)
        try:
            await self.kube.create_service(body)
        except AlreadyExists:
            meta = body["metadata"]
            await self.kube.patch_service(meta["namespace"], meta["name"], {"metadata": {"labels": meta["labels"]}})

    async def _ensure_deployment(self, key: Key, res: DepthPool, current: dict[str, Any] | None,
                                 replicas: int) -> dict[str, Any] | None:
        body = pool.deployment(res, self.settings, replicas)
        meta = body["metadata"]
        if current is None:
            try:
                created = await self.kube.create_deployment(body)
            except AlreadyExists:
                created = await self.kube.get_deployment(meta["namespace"], meta["name"])
                current = slim(created, drop_spec_keys=("template",))
            else:
                self.put_deployment(created)
                return self.deployments.get(key)
        patch: dict[str, Any] = {}
        have_hash = (current["metadata"].get("annotations") or {}).get(pool.ANNOTATION_SPEC_HASH)
        if have_hash != meta["annotations"][pool.ANNOTATION_SPEC_HASH]:
            patch = {"metadata": {"annotations": meta["annotations"], "labels": meta["labels"]},
                     "spec": {"template": body["spec"]["template"], "strategy": body["spec"]["strategy"]}}
        if (current.get("spec") or {}).get("replicas") != replicas:
            patch.setdefault("spec", {})["replicas"] = replicas
        if patch:
            patched = await self.kube.patch_deployment(meta["namespace"], meta["name"], patch)
            self.put_deployment(patched)
        return self.deployments.get(key, current)

    async def _write_status(self, key: Key, obj: dict[str, Any], status: DepthPoolStatus, *,
                            ready: Cond, limited: Cond | None) -> None:
        """Conditions, the hand-off back-off and observedGeneration onto `status`; written
        (through status.model_patch) only when something changed."""
        gen = obj["metadata"].get("generation")
        have = obj.get("status") or {}
        now = now_iso()
        conditions = set_condition(have.get("conditions") or [], dp.READY, *ready, gen, now=now)
        if limited is not None:
            conditions = set_condition(conditions, dp.BUDGET_LIMITED, *limited, gen, now=now)
        until = self.back_off_until.get(key)
        backing_off = until is not None and dt.datetime.now(dt.UTC) < until
        failed = self.failed_hand_offs.get(key, 0)
        if backing_off or any(x.get("type") == dp.HANDOFF_BACKOFF for x in conditions):
            conditions = set_condition(conditions, dp.HANDOFF_BACKOFF, *(
                ("True", dp.REASON_HANDOFFS_FAILING, f"{failed} hand-offs in a row failed; none until {_iso(until)}")
                if backing_off and until is not None else
                ("False", dp.REASON_HANDOFFS_OK, "the pool takes hand-offs")), gen, now=now)
        status = status.model_copy(update={
            "conditions": [Condition.model_validate(x) for x in conditions], "observed_generation": gen,
            "failed_hand_offs": failed, "back_off_until": _iso(until) if backing_off and until is not None else None})
        patch = model_patch(have, status)
        if not patch:
            return
        if limited is not None and limited[0] == "True" and (have.get("reason") != limited[1]
                                                             or have.get("replicas") != status.replicas):
            await self.kube.event({**obj, "kind": self.kind}, "Warning", dp.BUDGET_LIMITED, limited[2], now)
        patched = await self.kube.patch_pool_status(key[1], key[2], patch)
        self.put_pool(patched)
