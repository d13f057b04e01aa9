"""Kopf wiring: start-up, and event handlers that feed the cache and enqueue work.

The handlers hold no logic: every decision is in `reconciler.py` (and the rooms it names),
computed from the cache. The parts they feed are built by `app.build` before Kopf starts and
reach them as `memo.operator`.
"""

from __future__ import annotations

import logging
from typing import Any

import kopf
from spatialforge.crds import constants as c
from spatialforge.crds.kinds import BY_PLURAL, KINDS
from spatialforge.crds.v1alpha1 import depthpool
from spatialforge.operator import pool
from spatialforge.operator.app import Operator

log = logging.getLogger(__name__)
MANAGED = {c.LABEL_MANAGED_BY: c.MANAGED_BY}


@kopf.on.login()
def login(**kwargs: Any) -> kopf.ConnectionInfo | None:
    """Log in from the kubeconfig or the in-cluster service account, not via the kubernetes
    client (whose 36.x releases broke Kopf's client-based login)."""
    return kopf.login_with_service_account(**kwargs) or kopf.login_with_kubeconfig(**kwargs)


class EventOnlyDiffBaseStorage(kopf.AnnotationsDiffBaseStorage):
    """Kopf builds a diff base (a deep copy of the whole object) on every event, for change
    handlers. This operator registers event handlers only, which never read it, and those
    copies were its largest CPU cost in profiles; so the essence is left empty."""

    def build(self, *, body: kopf.Body, extra_fields: Any = None) -> Any:
        return {}


@kopf.on.startup()
async def startup(settings: kopf.OperatorSettings, memo: kopf.Memo, **_: Any) -> None:
    settings.persistence.progress_storage = kopf.AnnotationsProgressStorage(prefix=c.GROUP)
    settings.persistence.diffbase_storage = EventOnlyDiffBaseStorage(prefix=c.GROUP)
    # Bounded watch requests: a silently stalled stream is re-opened (kopf#1267).
    settings.watching.server_timeout = 240
    settings.watching.client_timeout = 270
    settings.watching.connect_timeout = 30
    # Kopf lists before it watches, in one request unless told otherwise: 10,000 resources were
    # a 78 MB body parsed at once (450 MB of dicts, most of the operator's peak RSS).
    settings.watching.chunk_size = 500
    settings.posting.level = logging.WARNING
    # Event handlers only feed the cache: no need to wait for a burst of events to settle.
    settings.batching.batch_window = 0.01
    # Kopf keeps a worker task per object until it has been idle this long (default 5 s): with
    # 10,000 resources and their Jobs arriving in a burst, that was ~20,000 live workers.
    settings.batching.idle_timeout = 0.5
    settings.networking.request_timeout = 60

    operator: Operator = memo.operator
    operator.start()
    log.info("operator started: %d resources, %d jobs in cache", len(operator.cache.resources), len(operator.cache.jobs))


@kopf.on.cleanup()
async def cleanup(memo: kopf.Memo, **_: Any) -> None:
    await memo.operator.stop()


# The event handlers are coroutines on purpose: Kopf runs plain functions in a thread pool,
# where touching the cache raced with the admission pass iterating it ("dictionary changed
# size during iteration"), and asyncio.Event.set / Queue.put_nowait from a thread do not wake
# the loop, so an admission pass started only at the next unrelated wake-up (stalls of ~1 s).
async def resource_event(event: dict[str, Any], resource: kopf.Resource, memo: kopf.Memo, **_: Any) -> None:
    if event.get("type") is None and not event.get("object"):
        return
    op: Operator = memo.operator
    obj = dict(event["object"])
    obj.setdefault("kind", BY_PLURAL[resource.plural].kind)
    deleted = event.get("type") == "DELETED"
    if not deleted and op.cache.holds_resource(obj):
        return
    key = op.cache.put_resource(obj, deleted=deleted)
    if event.get("type") in ("ADDED", "DELETED", None) or _spec_or_meta_changed(obj):
        op.admitter.poke()
    op.queue.add(key)


for _kind in KINDS:
    resource_event = kopf.on.event(c.GROUP, c.VERSION, _kind.plural)(resource_event)


def _spec_or_meta_changed(obj: dict[str, Any]) -> bool:
    meta = obj["metadata"]
    return bool(meta.get("deletionTimestamp")) or (obj.get("status") or {}).get("observedGeneration") != meta.get("generation")


@kopf.on.event("batch", "v1", "jobs", labels=MANAGED)
async def job_event(event: dict[str, Any], memo: kopf.Memo, **_: Any) -> None:
    if not event.get("object"):
        return
    op: Operator = memo.operator
    deleted = event.get("type") == "DELETED"
    if not deleted and op.cache.holds_job(event["object"]):
        return
    key = op.cache.put_job(dict(event["object"]), deleted=deleted)
    if key is not None:
        op.queue.add(key)
        if event.get("type") == "DELETED":
            op.admitter.poke()


@kopf.on.event("", "v1", "pods", labels=MANAGED)
async def pod_event(event: dict[str, Any], memo: kopf.Memo, **_: Any) -> None:
    if not event.get("object"):
        return
    op: Operator = memo.operator
    deleted = event.get("type") == "DELETED"
    if not deleted and op.cache.holds_pod(event["object"]):
        return
    key = op.cache.put_pod(dict(event["object"]), deleted=deleted)
    if key is not None:
        op.queue.add(key)


@kopf.on.event("", "v1", "namespaces")
async def namespace_event(event: dict[str, Any], memo: kopf.Memo, **_: Any) -> None:
    if not event.get("object"):
        return
    op: Operator = memo.operator
    if op.cache.put_namespace(dict(event["object"]), deleted=event.get("type") == "DELETED"):
        op.admitter.poke()


@kopf.on.event("", "v1", "nodes")
async def node_event(event: dict[str, Any], memo: kopf.Memo, **_: Any) -> None:
    """Nodes for the node-fit check; heartbeats change nothing it reads and wake nothing."""
    if not event.get("object"):
        return
    op: Operator = memo.operator
    if op.cache.put_node(dict(event["object"]), deleted=event.get("type") == "DELETED"):
        op.admitter.nodes_changed()



# DepthPools (operator/poolctl.py): the pools, their Deployments and their Services' EndpointSlices.
POOL_CHILDREN = {c.LABEL_COMPONENT: pool.COMPONENT}


@kopf.on.event(c.GROUP, c.VERSION, depthpool.PLURAL)
async def pool_event(event: dict[str, Any], memo: kopf.Memo, **_: Any) -> None:
    if not event.get("object"):
        return
    memo.operator.pools.put_pool({**event["object"], "kind": depthpool.KIND}, deleted=event.get("type") == "DELETED")


@kopf.on.event("apps", "v1", "deployments", labels=POOL_CHILDREN)
async def pool_deployment_event(event: dict[str, Any], memo: kopf.Memo, **_: Any) -> None:
    if not event.get("object"):
        return
    memo.operator.pools.put_deployment(dict(event["object"]), deleted=event.get("type") == "DELETED")


@kopf.on.event("discovery.k8s.io", "v1", "endpointslices", labels=POOL_CHILDREN)
async def pool_endpoints_event(event: dict[str, Any], memo: kopf.Memo, **_: Any) -> None:
    """The endpointslice controller copies the Service's labels onto its slices."""
    if not event.get("object"):
        return
    memo.operator.pools.endpoints_changed(dict(event["object"]))
