"""The only module of ours that calls the Kubernetes API (kubernetes_asyncio: never blocks the
loop); Kopf's own watches and its Events are the only other callers.

Everything comes back as plain dicts (camelCase, as on the wire), which keeps the operator
fast at thousands of objects and lets pure code consume exactly what the API returned.
"""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from typing import Any

from kubernetes_asyncio import client
from kubernetes_asyncio.client.rest import ApiException

from spatialforge.crds.constants import GROUP, VERSION
from spatialforge.crds.kinds import ALL_KINDS, BY_KIND
from spatialforge.crds.rbac import runner_rules
from spatialforge.crds.v1alpha1 import depthpool

MERGE = "application/merge-patch+json"
PAGE = 500
"""Start-up lists are read this many objects at a time, so the cache slims each page before the
next arrives (unpaginated, 10,000 Jobs were one body of tens of MB parsed at once)."""


class NotFound(Exception):
    pass


class AlreadyExists(Exception):
    pass


class ConflictError(Exception):
    pass


def _raise(exc: ApiException) -> None:
    if exc.status == 404:
        raise NotFound(exc.reason) from exc
    if exc.status == 409:
        body = exc.body.decode() if isinstance(exc.body, bytes) else str(exc.body or "")
        body += f" {exc.reason or ''}"
        if "AlreadyExists" in body or "already exists" in body:
            raise AlreadyExists(exc.reason) from exc
        raise ConflictError(exc.reason) from exc
    raise exc


async def _checked(coro: Any) -> Any:
    """The raw response of a `_preload_content=False` call. kubernetes_asyncio raises for an
    error status only when it preloads the body, so the status is checked here: an error
    answer (a missing CRD's route answers a plain-text "404 page not found") becomes our
    exception, never a JSON parse error of its body."""
    try:
        resp = await coro
    except ApiException as exc:
        _raise(exc)
        raise
    if not 200 <= resp.status <= 299:
        async with resp:
            body = await resp.read()
        _raise(ApiException(status=resp.status, reason=_reason(resp.status, body)))
        raise AssertionError("unreachable")
    return resp


def _reason(status: int, body: bytes) -> str:
    """The API server's message from a Status body, else the body's first line."""
    try:
        data = json.loads(body)
        if isinstance(data, dict):
            return str(data.get("message") or data.get("reason") or status)
    except ValueError:
        pass
    return body.decode(errors="replace").strip().splitlines()[0][:300] if body.strip() else str(status)


async def _json(coro: Any) -> dict[str, Any]:
    resp = await _checked(coro)
    async with resp:
        body = json.loads(await resp.read())
    if body.get("kind") == "Status":  # e.g. a write that finished deleting the object
        raise NotFound(body.get("message") or body.get("reason") or "object is gone")
    return body


async def _pages(call: Any, *, kind: str | None = None) -> AsyncIterator[dict[str, Any]]:
    """The items of a paginated list; `call(continue_token)` starts one page's request."""
    cont = None
    while True:
        page = await _json(call(cont))
        for item in page["items"]:
            if kind is not None:
                item.setdefault("kind", kind)
            yield item
        cont = page["metadata"].get("continue")
        if not cont:
            return


class Kube:
    """Thin async facade over the API groups the operator uses."""

    def __init__(self, api: client.ApiClient) -> None:
        self.api = api
        self.core = client.CoreV1Api(api)
        self.batch = client.BatchV1Api(api)
        self.custom = client.CustomObjectsApi(api)
        self.coord = client.CoordinationV1Api(api)
        self.apps = client.AppsV1Api(api)
        self.discovery = client.DiscoveryV1Api(api)

    # -- our resources -------------------------------------------------------------------
    def list_resources(self, kind: str) -> AsyncIterator[dict[str, Any]]:
        """Every resource of `kind`, a page at a time (see `_pages`)."""
        return _pages(lambda cont: self.custom.list_cluster_custom_object(
            GROUP, VERSION, BY_KIND[kind].plural, limit=PAGE, _continue=cont, _preload_content=False), kind=kind)

    async def patch_status(self, kind: str, namespace: str, name: str, status: dict[str, Any]) -> dict[str, Any]:
        return await _json(self.custom.patch_namespaced_custom_object_status(
            GROUP, VERSION, namespace, BY_KIND[kind].plural, name, {"status": status},
            _content_type=MERGE, _preload_content=False))

    async def get_resource(self, kind: str, namespace: str, name: str) -> dict[str, Any]:
        return await _json(self.custom.get_namespaced_custom_object(
            GROUP, VERSION, namespace, BY_KIND[kind].plural, name, _preload_content=False))

    async def patch_resource(self, kind: str, namespace: str, name: str, patch: dict[str, Any]) -> dict[str, Any]:
        return await _json(self.custom.patch_namespaced_custom_object(
            GROUP, VERSION, namespace, BY_KIND[kind].plural, name, patch, _content_type=MERGE, _preload_content=False))

    async def delete_resource(self, kind: str, namespace: str, name: str, uid: str) -> None:
        try:
            await self.custom.delete_namespaced_custom_object(
                GROUP, VERSION, namespace, BY_KIND[kind].plural, name,
                body={"preconditions": {"uid": uid}, "propagationPolicy": "Background"})
        except ApiException as exc:
            if exc.status not in (404, 409):
                raise

    # -- DepthPools and their Deployments, Services and EndpointSlices (operator/poolctl.py) ----
    async def list_pools(self) -> list[dict[str, Any]]:
        """Every DepthPool ([] when its CRD is not installed: pools are optional)."""
        try:
            page = await _json(self.custom.list_cluster_custom_object(GROUP, VERSION, depthpool.PLURAL,
                                                                      _preload_content=False))
        except NotFound:
            return []
        for item in page["items"]:
            item.setdefault("kind", depthpool.KIND)
        return page["items"]

    async def patch_pool_status(self, namespace: str, name: str, status: dict[str, Any]) -> dict[str, Any]:
        out = await _json(self.custom.patch_namespaced_custom_object_status(
            GROUP, VERSION, namespace, depthpool.PLURAL, name, {"status": status},
            _content_type=MERGE, _preload_content=False))
        out.setdefault("kind", depthpool.KIND)
        return out

    async def list_deployments(self, selector: str) -> list[dict[str, Any]]:
        page = await _json(self.apps.list_deployment_for_all_namespaces(label_selector=selector, _preload_content=False))
        return page["items"]

    async def get_deployment(self, namespace: str, name: str) -> dict[str, Any]:
        return await _json(self.apps.read_namespaced_deployment(name, namespace, _preload_content=False))

    async def create_deployment(self, body: dict[str, Any]) -> dict[str, Any]:
        return await _json(self.apps.create_namespaced_deployment(body["metadata"]["namespace"], body,
                                                                  _preload_content=False))

    async def patch_deployment(self, namespace: str, name: str, patch: dict[str, Any]) -> dict[str, Any]:
        return await _json(self.apps.patch_namespaced_deployment(name, namespace, patch, _content_type=MERGE,
                                                                 _preload_content=False))

    async def create_service(self, body: dict[str, Any]) -> dict[str, Any]:
        return await _json(self.core.create_namespaced_service(body["metadata"]["namespace"], body,
                                                               _preload_content=False))

    async def patch_service(self, namespace: str, name: str, patch: dict[str, Any]) -> dict[str, Any]:
        return await _json(self.core.patch_namespaced_service(name, namespace, patch, _content_type=MERGE,
                                                              _preload_content=False))

    async def list_endpoint_slices(self, namespace: str, selector: str) -> list[dict[str, Any]]:
        page = await _json(self.discovery.list_namespaced_endpoint_slice(namespace, label_selector=selector,
                                                                          _preload_content=False))
        return page["items"]

    # -- Jobs and pods -------------------------------------------------------------------
    def list_jobs(self, selector: str) -> AsyncIterator[dict[str, Any]]:
        return _pages(lambda cont: self.batch.list_job_for_all_namespaces(
            label_selector=selector, limit=PAGE, _continue=cont, _preload_content=False))

    def list_pods(self, selector: str) -> AsyncIterator[dict[str, Any]]:
        return _pages(lambda cont: self.core.list_pod_for_all_namespaces(
            label_selector=selector, limit=PAGE, _continue=cont, _preload_content=False))

    async def get_job(self, namespace: str, name: str) -> dict[str, Any]:
        return await _json(self.batch.read_namespaced_job(name, namespace, _preload_content=False))

    async def create_job(self, body: dict[str, Any]) -> dict[str, Any]:
        return await _json(self.batch.create_namespaced_job(body["metadata"]["namespace"], body, _preload_content=False))

    async def patch_job(self, namespace: str, name: str, patch: dict[str, Any]) -> dict[str, Any]:
        return await _json(self.batch.patch_namespaced_job(name, namespace, patch, _content_type=MERGE,
                                                           _preload_content=False))

    async def delete_job(self, namespace: str, name: str) -> None:
        try:
            await self.batch.delete_namespaced_job(name, namespace, propagation_policy="Background")
        except ApiException as exc:
            if exc.status != 404:
                raise

    async def job_failure_events(self, namespace: str, job_name: str) -> list[str]:
        """Messages of the Job controller's FailedCreate events for a Job (pods it could not create)."""
        page = await _json(self.core.list_namespaced_event(
            namespace, field_selector=f"involvedObject.kind=Job,involvedObject.name={job_name},reason=FailedCreate",
            _preload_content=False))
        return [e.get("message", "") for e in page["items"]]

    # -- the runner's identity -------------------------------------------------------------
    async def ensure_runner_identity(self, namespace: str, account: str) -> None:
        """The runner's service account in a tenant namespace, bound to a Role that may read
        our resources and patch their status there, and nothing else."""
        rbac = client.RbacAuthorizationV1Api(self.api)
        role = {
            "metadata": {"name": account, "namespace": namespace,
                         "labels": {"app.kubernetes.io/managed-by": "spatialforge-operator"}},
            "rules": runner_rules(),  # one source with the chart's Role (spatialforge.crds.rbac)
        }
        binding = {
            "metadata": {"name": account, "namespace": namespace,
                         "labels": {"app.kubernetes.io/managed-by": "spatialforge-operator"}},
            "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "Role", "name": account},
            "subjects": [{"kind": "ServiceAccount", "name": account, "namespace": namespace}],
        }
        sa = {"metadata": {"name": account, "namespace": namespace,
                           "labels": {"app.kubernetes.io/managed-by": "spatialforge-operator"}}}
        for create, body in ((self.core.create_namespaced_service_account, sa),
                             (rbac.create_namespaced_role, role),
                             (rbac.create_namespaced_role_binding, binding)):
            try:
                await create(namespace, body)
            except ApiException as exc:
                if exc.status != 409:
                    _raise(exc)

    # -- limits and nodes --------------------------------------------------------------------
    async def list_namespaces(self) -> list[dict[str, Any]]:
        return (await _json(self.core.list_namespace(_preload_content=False)))["items"]

    async def list_nodes(self) -> list[dict[str, Any]] | None:
        """Every node, or None when the operator may not list them (RBAC)."""
        try:
            return (await _json(self.core.list_node(_preload_content=False)))["items"]
        except ApiException as exc:
            if exc.status == 403:
                return None
            raise

    async def missing_crds(self) -> list[str]:
        """Names of our CustomResourceDefinitions the API server does not serve (DepthPool's too)."""
        ext = client.ApiextensionsV1Api(self.api)
        page = await _json(ext.list_custom_resource_definition(_preload_content=False))
        have = {item["metadata"]["name"] for item in page["items"]}
        return [k.crd_name for k in ALL_KINDS if k.crd_name not in have]

    # -- the leader Lease ------------------------------------------------------------------
    async def get_lease(self, namespace: str, name: str) -> dict[str, Any] | None:
        try:
            return await _json(self.coord.read_namespaced_lease(name, namespace, _preload_content=False))
        except NotFound:
            return None

    async def create_lease(self, body: dict[str, Any]) -> dict[str, Any]:
        return await _json(self.coord.create_namespaced_lease(body["metadata"]["namespace"], body,
                                                               _preload_content=False))

    async def replace_lease(self, body: dict[str, Any]) -> dict[str, Any]:
        """Replace with the body's resourceVersion: ConflictError when someone wrote first."""
        meta = body["metadata"]
        return await _json(self.coord.replace_namespaced_lease(meta["name"], meta["namespace"], body,
                                                                _preload_content=False))

    async def list_configmap(self, namespace: str, name: str) -> tuple[dict[str, Any] | None, str]:
        """The named ConfigMap (or None) and the list's resourceVersion to watch from. Listing
        by `metadata.name` is what RBAC needs to allow list/watch restricted to that name."""
        page = await _json(self.core.list_namespaced_config_map(
            namespace, field_selector=f"metadata.name={name}", _preload_content=False))
        return (page["items"][0] if page["items"] else None), page["metadata"]["resourceVersion"]

    async def watch_configmap(self, namespace: str, name: str, resource_version: str,
                              timeout_seconds: int = 240) -> AsyncIterator[dict[str, Any]]:
        """Watch events ({"type", "object"}) of the named ConfigMap, until the server ends the
        watch (bounded, like Kopf's watches, against silently stalled streams)."""
        resp = await _checked(self.core.list_namespaced_config_map(
            namespace, field_selector=f"metadata.name={name}", watch=True, resource_version=resource_version,
            allow_watch_bookmarks=True, timeout_seconds=timeout_seconds, _preload_content=False,
            _request_timeout=timeout_seconds + 30))
        async with resp:
            while line := await resp.content.readline():
                yield json.loads(line)

    # -- events ----------------------------------------------------------------------------
    async def event(self, obj: dict[str, Any], type_: str, reason: str, message: str, now: str) -> None:
        meta = obj["metadata"]
        body = {
            "metadata": {"generateName": f"{meta['name']}.", "namespace": meta["namespace"]},
            "involvedObject": {"apiVersion": obj.get("apiVersion"), "kind": obj.get("kind"), "name": meta["name"],
                               "namespace": meta["namespace"], "uid": meta["uid"],
                               "resourceVersion": meta.get("resourceVersion")},
            "type": type_, "reason": reason, "message": message[:1024],
            "firstTimestamp": now, "lastTimestamp": now, "count": 1,
            "source": {"component": "spatialforge-operator"},
            "reportingComponent": "spatialforge.io/operator", "reportingInstance": "spatialforge-operator",
        }
        try:
            await self.core.create_namespaced_event(meta["namespace"], body)
        except ApiException:
            pass  # events are best effort


class RunnerIdentities:
    """The runner's ServiceAccount and Role in each tenant namespace, made once per namespace
    per process; shared by the admitter (Jobs) and the pool controller (replicas)."""

    def __init__(self, kube: Kube, account: str) -> None:
        self.kube, self.account = kube, account
        self.ready: set[str] = set()

    async def ensure(self, namespace: str) -> None:
        if namespace not in self.ready:
            await self.kube.ensure_runner_identity(namespace, self.account)
            self.ready.add(namespace)
