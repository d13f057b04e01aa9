"""The only module that calls the Kubernetes API: tenant namespaces, custom resources, a cache.

Reads come from `JobCache`, fed by one list + watch per kind across namespaces, restricted
to resources carrying the tenant label; handlers never call the API to read a job.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable
from typing import Any

from kubernetes_asyncio import client, config, watch
from kubernetes_asyncio.client.exceptions import ApiException

from spatialforge.aio import cancel_and_wait
from spatialforge.crds.kinds import BY_KIND
from spatialforge.crds.constants import ANNOTATION_GPU_LIMIT, GROUP, LABEL_TENANT, VERSION
from spatialforge.kubeclient import tuned

log = logging.getLogger("spatialforge.apiserver.kube")

KINDS = BY_KIND
PLURALS = {kind: entry.plural for kind, entry in BY_KIND.items()}
TERMINAL = {"Succeeded", "Failed", "Cancelled"}
WATCH_SERVER_TIMEOUT = 240
WATCH_CLIENT_TIMEOUT = 270

Listener = Callable[[dict[str, Any]], Awaitable[None]]


async def make_api_client(kubeconfig: str | None) -> client.ApiClient:
    cfg = client.Configuration()
    if kubeconfig:
        await config.load_kube_config(config_file=kubeconfig, client_configuration=cfg)
    else:
        config.load_incluster_config(client_configuration=cfg)
    return tuned(client.ApiClient(cfg))


def _rv(obj: dict[str, Any]) -> int:
    try:
        return int(obj.get("metadata", {}).get("resourceVersion") or 0)
    except ValueError:
        return 0


def _phase(obj: dict[str, Any] | None) -> str | None:
    return ((obj or {}).get("status") or {}).get("phase")


class Kube:
    """Writes: namespaces with their GPU-limit annotation, resources, deletions."""

    def __init__(self, api: client.ApiClient) -> None:
        self.api = api
        self.core = client.CoreV1Api(api)
        self.custom = client.CustomObjectsApi(api)
        self._known_ns: dict[str, str] = {}

    async def ensure_namespace(self, namespace: str, tenant: str, gpu_limit: int, *, refresh: bool = False) -> None:
        """Create the tenant namespace if needed and set its GPU limit (the operator reads it).
        Skipped when this process wrote the same limit already, unless `refresh`."""
        want = str(gpu_limit)
        if not refresh and self._known_ns.get(namespace) == want:
            return
        meta = {"name": namespace, "labels": {LABEL_TENANT: tenant}, "annotations": {ANNOTATION_GPU_LIMIT: want}}
        try:
            await self.core.create_namespace({"apiVersion": "v1", "kind": "Namespace", "metadata": meta})
        except ApiException as exc:
            if exc.status != 409:
                raise
            await self.core.patch_namespace(namespace, {"metadata": {"labels": meta["labels"],
                                                                     "annotations": meta["annotations"]}})
        self._known_ns[namespace] = want

    async def gpu_limit(self, namespace: str) -> str | None:
        ns = await self.core.read_namespace(namespace)
        return (ns.metadata.annotations or {}).get(ANNOTATION_GPU_LIMIT)

    async def create(self, kind: str, namespace: str, body: dict[str, Any]) -> dict[str, Any]:
        return await self.custom.create_namespaced_custom_object(GROUP, VERSION, namespace, PLURALS[kind], body)

    async def read(self, kind: str, namespace: str, name: str) -> dict[str, Any] | None:
        try:
            return await self.custom.get_namespaced_custom_object(GROUP, VERSION, namespace, PLURALS[kind], name)
        except ApiException as exc:
            if exc.status == 404:
                return None
            raise

    async def delete(self, kind: str, namespace: str, name: str) -> bool:
        try:
            await self.custom.delete_namespaced_custom_object(GROUP, VERSION, namespace, PLURALS[kind], name)
            return True
        except ApiException as exc:
            if exc.status == 404:
                return False
            raise

    async def ping(self) -> None:
        await client.VersionApi(self.api).get_code(_request_timeout=3)


class JobCache:
    """Tenant-labelled resources of both kinds, kept current by list + watch.

    `listeners` are called (in the watch task) when a resource is first seen in a terminal
    phase, including on the initial list after a restart; they must be idempotent.
    """

    def __init__(self, kube: Kube) -> None:
        self.kube = kube
        self.objects: dict[tuple[str, str], dict[str, Any]] = {}
        self.listeners: list[Listener] = []
        self.synced = {kind: asyncio.Event() for kind in KINDS}
        self._tasks: list[asyncio.Task[None]] = []
        self.last_error: str | None = None

    def start(self) -> None:
        for kind in KINDS:
            self._tasks.append(asyncio.create_task(self._run(kind), name=f"watch-{kind}"))

    async def stop(self) -> None:
        await cancel_and_wait(self._tasks)

    def ready(self) -> bool:
        return all(e.is_set() for e in self.synced.values())

    async def wait_synced(self, timeout: float) -> None:
        await asyncio.wait_for(asyncio.gather(*(e.wait() for e in self.synced.values())), timeout)

    def get(self, namespace: str, name: str) -> dict[str, Any] | None:
        return self.objects.get((namespace, name))

    def in_namespace(self, namespace: str) -> list[dict[str, Any]]:
        return [o for (ns, _), o in self.objects.items() if ns == namespace]

    async def put(self, obj: dict[str, Any]) -> None:
        """Record an object (an event, or what our own write returned) unless we hold newer."""
        meta = obj.get("metadata", {})
        key = (meta.get("namespace", ""), meta.get("name", ""))
        old = self.objects.get(key)
        if old is not None and old["metadata"].get("uid") == meta.get("uid") and _rv(old) > _rv(obj):
            return
        self.objects[key] = obj
        if _phase(obj) in TERMINAL and (old is None or _phase(old) not in TERMINAL
                                        or old["metadata"].get("uid") != meta.get("uid")):
            for listener in self.listeners:
                try:
                    await listener(obj)
                except Exception:  # a listener's failure must not stop the watch
                    log.exception("terminal-phase listener failed for %s/%s", *key)

    def forget(self, obj: dict[str, Any]) -> None:
        meta = obj.get("metadata", {})
        key = (meta.get("namespace", ""), meta.get("name", ""))
        old = self.objects.get(key)
        if old is not None and old["metadata"].get("uid") == meta.get("uid"):
            del self.objects[key]

    async def _run(self, kind: str) -> None:
        plural = PLURALS[kind]
        custom = self.kube.custom
        backoff = 0.5
        while True:
            try:
                listing = await custom.list_cluster_custom_object(GROUP, VERSION, plural, label_selector=LABEL_TENANT)
                rv = listing["metadata"]["resourceVersion"]
                seen = set()
                for obj in listing.get("items", []):
                    obj.setdefault("kind", kind)
                    seen.add((obj["metadata"]["namespace"], obj["metadata"]["name"]))
                    await self.put(obj)
                for key in [k for k, o in self.objects.items() if o.get("kind") == kind and k not in seen]:
                    del self.objects[key]
                self.synced[kind].set()
                self.last_error = None
                backoff = 0.5
                while True:
                    w = watch.Watch()
                    async with w.stream(custom.list_cluster_custom_object, GROUP, VERSION, plural,
                                        label_selector=LABEL_TENANT, resource_version=rv,
                                        allow_watch_bookmarks=True, timeout_seconds=WATCH_SERVER_TIMEOUT,
                                        _request_timeout=WATCH_CLIENT_TIMEOUT) as stream:
                        async for event in stream:
                            obj = event["object"]
                            if event["type"] == "ERROR":
                                raise ApiException(status=obj.get("code", 500), reason=obj.get("message"))
                            rv = obj.get("metadata", {}).get("resourceVersion", rv)
                            if event["type"] == "BOOKMARK":
                                continue
                            obj.setdefault("kind", kind)
                            if event["type"] == "DELETED":
                                self.forget(obj)
                            else:
                                await self.put(obj)
                            # Events arrive in bursts already buffered (200 creates, 200 ADDED): let
                            # requests run between two events instead of after the whole burst.
                            await asyncio.sleep(0)
            except asyncio.CancelledError:
                raise
            except Exception as exc:  # 410 Gone, connection loss: relist after a pause
                self.last_error = f"{type(exc).__name__}: {str(exc)[:200]}"
                if not (isinstance(exc, ApiException) and exc.status == 410):
                    log.warning("watch of %s failed (%s); relisting in %.1fs", plural, self.last_error, backoff)
                    await asyncio.sleep(backoff)
                    backoff = min(backoff * 2, 10.0)
