"""The quota ConfigMap watch (operator/budget.py) on the real API server: a watch from a
resourceVersion that has left the API server's watch window is answered 410 Gone, and
BudgetWatch lists again and applies what changed meanwhile.

The window: kube-apiserver's watch cache keeps every event for at least 75 s
(`eventFreshDuration` in k8s.io/apiserver/pkg/storage/cacher/watch_cache.go) and evicts older
ones once its buffer is full. So the test waits 75 s without writing (the buffer does not grow
for stale events), then writes a scratch ConfigMap until a watch from the old version is
refused. Nothing is simulated but the moment of the first list: BudgetWatch is handed what a
list answered before the window moved, as an operator whose watch broke long ago would hold.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import AsyncIterator
from typing import Any

import pytest
from kubernetes_asyncio import client
from kubernetes_asyncio import config as kube_config

from spatialforge.devcluster.plane import Cluster
from spatialforge.operator.budget import BudgetWatch, QueueingStrategy
from spatialforge.operator.kube import Kube
from tests import timeouts

pytestmark = [pytest.mark.integration, pytest.mark.slow]

EVENT_FRESH_SECONDS = 75.0  # the watch cache's minimum history (see the module docstring)
QUOTA = "quota"


class StaleFirstList(Kube):
    """The real Kube, whose first ConfigMap list answers an earlier list's result instead."""

    def __init__(self, api: client.ApiClient, stale: tuple[dict[str, Any], str]) -> None:
        super().__init__(api)
        self.stale, self.lists = stale, 0

    async def list_configmap(self, namespace: str, name: str) -> tuple[dict[str, Any] | None, str]:
        self.lists += 1
        if self.lists == 1:
            return self.stale
        return await super().list_configmap(namespace, name)


@pytest.fixture
async def api(cluster: Cluster) -> AsyncIterator[client.ApiClient]:
    api = await kube_config.new_client_from_config(config_file=str(cluster.kubeconfig))
    yield api
    await api.close()


async def _gone(core: client.CoreV1Api, namespace: str, rv: str) -> bool:
    """Whether a watch from `rv` is refused as too old (410, in the stream or as the status)."""
    try:
        resp = await core.list_namespaced_config_map(namespace, watch=True, resource_version=rv, timeout_seconds=1,
                                                     _preload_content=False)
    except client.ApiException as exc:
        return exc.status == 410
    async with resp:
        body = await resp.read()
    return resp.status == 410 or b'"code":410' in body


async def _push_out_of_window(core: client.CoreV1Api, namespace: str, rv: str) -> int:
    """Wait out the fresh-event window, then write until a watch from `rv` is refused; returns the writes."""
    assert not await _gone(core, namespace, rv), "the version is already out of the window: nothing to test"
    await asyncio.sleep(EVENT_FRESH_SECONDS + 2)
    await core.create_namespaced_config_map(namespace, {"metadata": {"name": "churn"}, "data": {"n": "0"}})
    deadline = time.monotonic() + timeouts.LONG
    writes = 0
    while not await _gone(core, namespace, rv):
        assert time.monotonic() < deadline, f"a watch from {rv} still answered after {writes} writes"
        for _ in range(25):
            writes += 1
            await core.patch_namespaced_config_map("churn", namespace, {"data": {"n": str(writes)}})
    return writes


async def test_a_watch_from_an_expired_version_lists_again(api: client.ApiClient, namespace: str,
                                                           caplog: pytest.LogCaptureFixture) -> None:
    core = client.CoreV1Api(api)
    await core.create_namespaced_config_map(namespace, {"metadata": {"name": QUOTA}, "data": {"gpuBudget": "2"}})
    page = await core.list_namespaced_config_map(namespace, field_selector=f"metadata.name={QUOTA}")
    stale = (api.sanitize_for_serialization(page.items[0]), page.metadata.resource_version)
    # Changed after that list: only a new list (or a watch that still reaches back) sees it.
    await core.patch_namespaced_config_map(QUOTA, namespace,
                                           {"data": {"gpuBudget": "5", "queueingStrategy": "BestEffortFIFO"}})
    writes = await _push_out_of_window(core, namespace, stale[1])
    logging.getLogger(__name__).info("resourceVersion %s left the watch window after %d writes", stale[1], writes)

    kube = StaleFirstList(api, stale)
    seen: list[int | None] = []
    watch = BudgetWatch(kube, namespace, QUOTA, on_change=lambda: seen.append(watch.quota.gpu_budget))
    caplog.set_level(logging.INFO, logger="spatialforge.operator.budget")
    task = asyncio.create_task(watch.run())
    try:
        deadline = time.monotonic() + timeouts.SHORT
        while watch.quota.gpu_budget != 5:
            assert time.monotonic() < deadline, f"quota never re-read: {seen}, {kube.lists} lists\n{caplog.text}"
            await asyncio.sleep(0.1)
    finally:
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)
    assert seen == [2, 5] and kube.lists == 2, (seen, kube.lists)
    assert watch.quota.strategy is QueueingStrategy.best_effort_fifo
    assert "listing again" in caplog.text and "too old resource version" in caplog.text, caplog.text
