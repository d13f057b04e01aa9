"""Which resources compete for GPUs in an admission pass (no API calls involved)."""

import asyncio

from spatialforge.operator import handlers
from spatialforge.operator.app import wire
from spatialforge.operator.cache import Cache
from spatialforge.operator.reconciler import forget_if_gone
from spatialforge.operator.settings import OperatorSettings
from spatialforge.operator.workqueue import WorkQueue


def resource(name: str, namespace: str) -> dict:
    return {"apiVersion": "spatialforge.io/v1alpha1", "kind": "DepthBatch",
            "metadata": {"name": name, "namespace": namespace, "uid": f"uid-{name}", "resourceVersion": "1",
                         "creationTimestamp": "2026-01-01T00:00:00Z", "generation": 1},
            "spec": {"inputs": ["s3://bucket/in/"], "output": {"uri": "s3://bucket/out"}, "placement": {"gpus": 1}}}


def test_resources_of_a_terminating_namespace_are_not_admitted() -> None:
    cache = Cache()
    op = wire(kube=None, cache=cache, settings=OperatorSettings())  # type: ignore[arg-type]
    cache.put_resource(resource("a", "live"))
    cache.put_resource(resource("b", "going"))
    cache.put_namespace({"metadata": {"name": "going", "deletionTimestamp": "2026-01-01T00:00:01Z"}})
    assert [c.key[1] for c in op.admitter.candidates()[0]] == ["live"]
    cache.put_namespace({"metadata": {"name": "going"}}, deleted=True)
    assert "going" not in cache.terminating


def test_event_handlers_are_coroutines() -> None:
    """Kopf runs plain functions in a thread pool; ours touch the cache and asyncio objects,
    which must only happen on the event loop."""
    for fn in (handlers.resource_event, handlers.job_event, handlers.pod_event, handlers.namespace_event):
        assert asyncio.iscoroutinefunction(fn), fn.__name__


def test_a_resource_the_api_server_no_longer_has_is_forgotten() -> None:
    """Deleted between the start-up listing and Kopf's watch: no DELETED event ever comes."""
    from spatialforge.operator.kube import NotFound

    class Kube:
        def __init__(self, present: set[str]) -> None:
            self.present = present

        async def get_resource(self, kind: str, namespace: str, name: str) -> dict:
            if name not in self.present:
                raise NotFound(name)
            return {}

    cache, queue, kube = Cache(), WorkQueue(), Kube({"kept"})
    gone, kept = cache.put_resource(resource("gone", "ns")), cache.put_resource(resource("kept", "ns"))
    assert asyncio.run(forget_if_gone(kube, cache, queue, gone)) is True and gone not in cache.resources  # type: ignore[arg-type]
    assert asyncio.run(forget_if_gone(kube, cache, queue, kept)) is False and kept in cache.resources  # type: ignore[arg-type]
