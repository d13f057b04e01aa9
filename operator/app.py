"""The composition root: every part of the operator is built here, once, and given its
collaborators when it is made; no part is handed another afterwards.

The parts need each other in a circle (the pools and the budget wake the admitter, the
admitter asks the pools, hand-offs end in the reconciler's queue), so what they share is made
first and passed to each: the work queue, the admission wake-up event, the runner
identities and `forget_if_gone`. `build` fills the cache before anything is decided;
`Operator.start` runs the loops, `Operator.stop` ends them.
"""

from __future__ import annotations

import asyncio
import functools
import logging
from dataclasses import dataclass, field
from typing import Any

from kubernetes_asyncio import client
from kubernetes_asyncio import config as kube_config

from spatialforge.crds import constants as c
from spatialforge.crds.kinds import KINDS
from spatialforge.gctune import tune_gc
from spatialforge.kubeclient import tuned
from spatialforge.operator import pool
from spatialforge.operator.admitter import Admitter
from spatialforge.operator.budget import BudgetWatch
from spatialforge.operator.cache import Cache, Key
from spatialforge.operator.handoff import HandOff
from spatialforge.operator.kube import Kube, RunnerIdentities
from spatialforge.operator.poolctl import PoolController
from spatialforge.operator.reconciler import Reconciler, forget_if_gone
from spatialforge.operator.settings import OperatorSettings
from spatialforge.operator.workqueue import WorkQueue

log = logging.getLogger(__name__)


async def api_client(settings: OperatorSettings) -> Any:
    """A kubernetes_asyncio client from KUBECONFIG or the pod's service account, tuned."""
    if settings.kubeconfig:
        return tuned(await kube_config.new_client_from_config(config_file=settings.kubeconfig))
    kube_config.load_incluster_config()
    return tuned(client.ApiClient())


@dataclass
class Operator:
    """The wired parts; Kopf's event handlers feed `cache`, `queue`, `admitter` and `pools`."""

    kube: Kube
    cache: Cache
    queue: WorkQueue
    budget: BudgetWatch
    pools: PoolController
    admitter: Admitter
    reconciler: Reconciler
    tasks: list[asyncio.Task[None]] = field(default_factory=list)

    def start(self) -> None:
        """Run the loops, and reconcile everything the cache holds."""
        self.reconciler.start()
        self.pools.start()
        self.tasks = [asyncio.create_task(self.admitter.run()), asyncio.create_task(self.budget.run())]
        for key in list(self.cache.resources):
            self.queue.add(key)
        self.admitter.poke()

    async def stop(self) -> None:
        await self.pools.stop()
        for t in self.tasks:
            t.cancel()
        await asyncio.gather(*self.tasks, return_exceptions=True)
        await self.reconciler.stop()


def wire(kube: Kube, cache: Cache, settings: OperatorSettings, *, node_fit_enabled: bool = True) -> Operator:
    """Make the parts and pass each its collaborators (no I/O)."""
    queue = WorkQueue()
    admission_wakeup = asyncio.Event()
    identities = RunnerIdentities(kube, settings.runner_service_account)
    forget = functools.partial(forget_if_gone, kube, cache, queue)
    budget = BudgetWatch(kube, settings.namespace, settings.quota_configmap, on_change=admission_wakeup.set)
    pools = PoolController(kube, settings, admission_wakeup.set, identities.ensure)

    def handed_back(key: Key) -> None:
        """A hand-off to a pool ended (outcome recorded, or back to the Job path)."""
        queue.add(key)
        admission_wakeup.set()

    handoff = HandOff(kube, cache, pools, settings, handed_back)
    admitter = Admitter(kube, cache, settings, queue, budget, admission_wakeup, identities.ensure, forget,
                        pools=pools, handoff=handoff, node_fit_enabled=node_fit_enabled)
    reconciler = Reconciler(kube, cache, settings, queue, admitter, forget)
    return Operator(kube, cache, queue, budget, pools, admitter, reconciler)


async def build(api: Any, settings: OperatorSettings) -> Operator:
    """List what the operator reads into a new cache (so nothing is decided on half a picture),
    then wire the parts."""
    kube, cache = Kube(api), Cache()
    for kind in KINDS:
        async for obj in kube.list_resources(kind.kind):
            cache.put_resource(obj)
    async for job in kube.list_jobs(f"{c.LABEL_MANAGED_BY}={c.MANAGED_BY}"):
        cache.put_job(job)
    async for pod in kube.list_pods(f"{c.LABEL_MANAGED_BY}={c.MANAGED_BY}"):
        cache.put_pod(pod)
    for ns in await kube.list_namespaces():
        cache.put_namespace(ns)
    try:  # pools are optional; their watch events fill the controller anyway
        pool_objs = await kube.list_pools()
        pool_deployments = await kube.list_deployments(f"{c.LABEL_COMPONENT}={pool.COMPONENT}") if pool_objs else []
    except Exception as exc:  # e.g. 429 "storage is (re)initializing" right after the CRD was installed
        log.warning("listing DepthPools at start-up failed (%s); their watch events will bring them", exc)
        pool_objs, pool_deployments = [], []
    nodes = await kube.list_nodes()
    for node in nodes or []:
        cache.put_node(node)
    if nodes is None:
        log.warning("may not list nodes: work that no node fits is admitted and left to the scheduler")
    operator = wire(kube, cache, settings, node_fit_enabled=nodes is not None)
    for obj in pool_objs:
        operator.pools.put_pool(obj)
    for obj in pool_deployments:
        operator.pools.put_deployment(obj)
    tune_gc()  # after the listing: what it made is frozen out of the collector's view
    log.info("operator built: %d resources, %d jobs in cache", len(cache.resources), len(cache.jobs))
    return operator
