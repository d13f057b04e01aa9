"""The runner's only Kubernetes calls: GET its own resource, merge-patch its shard's progress.

The runner's service account may read its resource and patch `status` (subresource) only;
the body it sends touches nothing but `status.progress.shards.<index>`.
"""

from __future__ import annotations

import asyncio
import logging
import time
from typing import Any

from spatialforge.aio import within
from spatialforge.crds.constants import GROUP, VERSION
from spatialforge.runner.progress import Progress, Snapshot

log = logging.getLogger(__name__)
MERGE_PATCH = "application/merge-patch+json"


async def load_config(kubeconfig: str | None) -> None:
    """KUBECONFIG when given, else the pod's in-cluster service account."""
    from kubernetes_asyncio import config

    if kubeconfig:
        await config.load_kube_config(config_file=kubeconfig)
    else:
        config.load_incluster_config()


class ResourceClient:
    """GET and status-patch one custom resource."""

    def __init__(self, api_client: Any, *, plural: str, namespace: str, name: str) -> None:
        from kubernetes_asyncio import client

        self.api = client.CustomObjectsApi(api_client)
        self.plural = plural
        self.namespace = namespace
        self.name = name

    async def get(self) -> dict[str, Any]:
        return await self.api.get_namespaced_custom_object(GROUP, VERSION, self.namespace, self.plural, self.name)

    async def patch_shard(self, index: int, snap: Snapshot) -> None:
        body = {"status": {"progress": {"shards": {str(index): snap.as_status()}}}}
        await self.api.patch_namespaced_custom_object_status(
            GROUP, VERSION, self.namespace, self.plural, self.name, body, _content_type=MERGE_PATCH
        )


class ProgressPatcher:
    """Patches the shard's progress at most once per `interval` while it changes, plus a final one.

    Runs as a task on the event loop while the work runs in a thread; failures are logged
    and retried on the next tick (progress is best-effort, never a reason to fail the run).
    """

    def __init__(self, client: ResourceClient, progress: Progress, index: int, *, interval: float = 1.0) -> None:
        self.client = client
        self.progress = progress
        self.index = index
        self.interval = interval
        self.patches = 0
        self._sent_version = -1
        self._task: asyncio.Task[None] | None = None
        self._stop = asyncio.Event()

    def start(self) -> None:
        self._task = asyncio.create_task(self._loop(), name="progress-patcher")

    async def _loop(self) -> None:
        last = 0.0
        while not self._stop.is_set():
            wait = max(0.05, self.interval - (time.monotonic() - last))
            await within(self._stop.wait(), wait)
            if self._stop.is_set():
                break
            if self.progress.version != self._sent_version:
                last = time.monotonic()
                await self._send()

    async def _send(self) -> bool:
        version = self.progress.version
        try:
            await self.client.patch_shard(self.index, self.progress.snapshot)
        except Exception as exc:  # noqa: BLE001 - best effort
            log.warning("progress patch failed: %s", exc)
            return False
        self._sent_version = version
        self.patches += 1
        return True

    async def close(self) -> None:
        """Stop the loop and send the final state (a few tries)."""
        self._stop.set()
        if self._task is not None:
            await self._task
        for attempt in range(3):
            if await self._send():
                return
            await asyncio.sleep(0.5 * (attempt + 1))
