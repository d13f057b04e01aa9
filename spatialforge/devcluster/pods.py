"""Play the kubelet for pods bound to the agent's nodes."""

from __future__ import annotations

import asyncio
import datetime as dt
import json
import logging
from collections import Counter
from pathlib import Path
from typing import Any

from kubernetes_asyncio import client
from kubernetes_asyncio.client.rest import ApiException

from spatialforge.devcluster import behaviour as rules
from spatialforge.devcluster import podnet, processes

log = logging.getLogger(__name__)
NAME_LABEL = "spatialforge.io/name"
INDEX_ANNOTATION = "batch.kubernetes.io/job-completion-index"
CONFIG_RETRY_SECONDS = 2.0  # a pod waiting for a Secret or ConfigMap tries again this often


def _now() -> str:
    return dt.datetime.now(dt.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


class Kubelet:
    """Watches pods on our nodes; one task per live pod."""

    def __init__(self, api: client.ApiClient, nodes: list[str], fallback: rules.Behaviour, state_dir: Path) -> None:
        self.api = api
        self.core = client.CoreV1Api(api)
        self.nodes = set(nodes)
        self.fallback = fallback
        self.state_dir = state_dir
        self.tasks: dict[str, asyncio.Task[None]] = {}
        self.deleting: set[str] = set()  # pods whose deletion is being confirmed
        self.attempts: Counter[tuple[str, str, str]] = Counter()
        self.server = api.configuration.host
        self.ca_file = api.configuration.ssl_ca_cert or ""

    async def run(self, stop: asyncio.Event) -> None:
        while not stop.is_set():
            try:
                await self._list_and_watch(stop)
            except asyncio.CancelledError:
                raise
            except Exception:
                log.exception("pod watch failed; relisting")
                await asyncio.sleep(1)

    async def _list_and_watch(self, stop: asyncio.Event) -> None:
        selector = "spec.nodeName!="
        resp = await self.core.list_pod_for_all_namespaces(field_selector=selector, _preload_content=False)
        listing = json.loads(await resp.read())
        for pod in listing["items"]:
            self._observe(pod)
        rv = listing["metadata"]["resourceVersion"]
        while not stop.is_set():
            resp = await self.core.list_pod_for_all_namespaces(
                field_selector=selector, watch=True, resource_version=rv, timeout_seconds=240,
                allow_watch_bookmarks=True, _preload_content=False,
            )
            async with resp:
                while line := await resp.content.readline():
                    event = json.loads(line)
                    if event["type"] == "ERROR":
                        if event["object"].get("code") == 410:
                            return  # resourceVersion too old: relist
                        raise RuntimeError(f"watch error: {event['object']}")
                    rv = event["object"]["metadata"]["resourceVersion"]
                    if event["type"] == "BOOKMARK":
                        continue
                    if event["type"] == "DELETED":
                        self._forget(event["object"])
                    else:
                        self._observe(event["object"])

    def _observe(self, pod: dict[str, Any]) -> None:
        if pod["spec"].get("nodeName") not in self.nodes:
            return
        uid = pod["metadata"]["uid"]
        if pod["metadata"].get("deletionTimestamp"):
            if uid in self.deleting:
                return
            self.deleting.add(uid)
            stopping = self._forget(pod)
            asyncio.create_task(self._confirm_deletion(pod, stopping))
            return
        if pod.get("status", {}).get("phase") in ("Succeeded", "Failed") or uid in self.tasks:
            return
        task = asyncio.create_task(self._play(pod))
        self.tasks[uid] = task
        task.add_done_callback(lambda _t, uid=uid: None)

    def _forget(self, pod: dict[str, Any]) -> asyncio.Task[None] | None:
        """Stop playing a pod (a process gets its graceful termination); the task, if any."""
        task = self.tasks.pop(pod["metadata"]["uid"], None)
        if task is not None and not task.done():
            task.cancel()
        return task

    async def _confirm_deletion(self, pod: dict[str, Any], stopping: asyncio.Task[None] | None) -> None:
        """Finish a deleted pod as a kubelet does: stop its container, report it terminated with
        a terminal phase, then delete it with grace period 0. The terminal phase is what lets the
        Job controller count the pod and drop its tracking finalizer; without it the pod (and
        a namespace being deleted around it) would wait for that finalizer."""
        meta = pod["metadata"]
        if stopping is not None:
            await asyncio.wait({stopping})
        try:
            await self._finish(pod)
        except ApiException as exc:
            if exc.status not in (404, 409, 422):
                log.warning("finishing %s/%s failed: %s", meta["namespace"], meta["name"], exc.reason)
        try:
            await self.core.delete_namespaced_pod(
                meta["name"], meta["namespace"], grace_period_seconds=0,
                body=client.V1DeleteOptions(grace_period_seconds=0, preconditions={"uid": meta["uid"]}),
            )
        except ApiException as exc:
            if exc.status not in (404, 409):
                log.warning("force delete of %s/%s failed: %s", meta["namespace"], meta["name"], exc.reason)
        finally:
            self.deleting.discard(meta["uid"])

    async def _finish(self, pod: dict[str, Any]) -> None:
        """Report a deleted pod's container terminated and the pod Failed (unless it already
        ended): 143 (SIGTERM) for a container that ran, as the kubelet reports a stopped one."""
        meta = pod["metadata"]
        current = await self.core.read_namespaced_pod_status(meta["name"], meta["namespace"], _preload_content=False)
        status = json.loads(await current.read()).get("status") or {}
        if status.get("phase") in ("Succeeded", "Failed"):
            return
        container = pod["spec"]["containers"][0]["name"]
        previous = next((c.get("state") or {} for c in status.get("containerStatuses") or []
                         if c.get("name") == container), {})
        if "running" in previous:
            terminated = {"exitCode": 143, "reason": "Error", "startedAt": previous["running"].get("startedAt", _now()),
                          "message": "stopped by the dev node agent: the pod was deleted"}
        else:
            terminated = {"exitCode": 137, "reason": "ContainerStatusUnknown",
                          "message": "the container never started before the pod was deleted"}
        terminated["finishedAt"] = _now()
        await self._patch(pod, {
            "phase": "Failed",
            "conditions": [_cond("Ready", "False", "PodCompleted"), _cond("ContainersReady", "False", "PodCompleted")],
            "containerStatuses": [_container(container, {"terminated": terminated}, ready=False)],
        })

    async def _behaviour(self, pod: dict[str, Any]) -> rules.Behaviour:
        meta = pod["metadata"]
        labels = meta.get("labels") or {}
        name = labels.get(NAME_LABEL) or labels.get("job-name")
        try:
            cm = await self.core.read_namespaced_config_map(rules.CONFIGMAP, rules.NAMESPACE)
            data = cm.data
        except ApiException as exc:
            if exc.status != 404:
                raise
            data = None
        return rules.resolve(data, meta["namespace"], name, self.fallback)

    async def _patch(self, pod: dict[str, Any], status: dict[str, Any]) -> None:
        meta = pod["metadata"]
        await self.core.patch_namespaced_pod_status(meta["name"], meta["namespace"], {"status": status})

    async def _run_process(self, pod: dict[str, Any], container: str) -> processes.Outcome:
        """Run the container as a process. It is Running once started and Ready as its readiness
        probe says (probes.py). A missing Secret or ConfigMap (or key) leaves the pod Pending
        with CreateContainerConfigError, retried as a kubelet does."""
        started = _now()  # of the current attempt; read by on_status

        async def on_status(ready: bool) -> None:
            await self._patch(pod, _running(container, started, ready=ready, ip=podnet.pod_ip(pod["metadata"]["uid"])))

        while True:
            started = _now()
            try:
                outcome = await processes.run(self.core, pod, self.state_dir, self.server, self.ca_file, on_status)
                outcome.started = started
                return outcome
            except processes.ConfigError as exc:
                log.info("pod %s/%s waits: %s", pod["metadata"]["namespace"], pod["metadata"]["name"], exc)
                await self._patch(pod, {
                    "phase": "Pending",
                    "conditions": [_cond("PodScheduled", "True"), _cond("Initialized", "True"),
                                   _cond("ContainersReady", "False"), _cond("Ready", "False")],
                    "containerStatuses": [_container(container, {"waiting": {
                        "reason": "CreateContainerConfigError", "message": str(exc)}}, ready=False)],
                })
                await asyncio.sleep(CONFIG_RETRY_SECONDS)
            except (ValueError, ApiException) as exc:
                return processes.Outcome(128, f"dev agent could not start the container: {exc}", "StartError")

    async def _play(self, pod: dict[str, Any]) -> None:
        meta = pod["metadata"]
        container = pod["spec"]["containers"][0]["name"]
        try:
            how = await self._behaviour(pod)
            key = (meta["namespace"], (meta.get("labels") or {}).get("job-name", meta["name"]),
                   (meta.get("annotations") or {}).get(INDEX_ANNOTATION, ""))
            attempt = self.attempts[key]
            self.attempts[key] += 1
            started = _now()
            if how.waiting_reason:
                await self._patch(pod, {
                    "phase": "Pending",
                    "conditions": [_cond("PodScheduled", "True"), _cond("Initialized", "True"),
                                   _cond("ContainersReady", "False"), _cond("Ready", "False")],
                    "containerStatuses": [_container(container, {"waiting": {"reason": how.waiting_reason,
                                                                             "message": how.message or how.waiting_reason}}, ready=False)],
                })
                return
            if how.mode == "process":
                outcome = await self._run_process(pod, container)
                started = outcome.started or started
            else:
                await self._patch(pod, _running(container, started, ready=True, ip=podnet.pod_ip(meta["uid"])))
                await asyncio.sleep(how.seconds)
                code = how.exit_code_for(attempt)
                outcome = processes.Outcome(code, how.message, "Completed" if code == 0 else ("OOMKilled" if code == 137 else "Error"))
            terminated = {"exitCode": outcome.exit_code, "reason": outcome.reason, "startedAt": started, "finishedAt": _now()}
            if outcome.message:
                terminated["message"] = outcome.message
            await self._patch(pod, {
                "phase": "Succeeded" if outcome.exit_code == 0 else "Failed",
                "conditions": [_cond("Ready", "False", "PodCompleted"), _cond("ContainersReady", "False", "PodCompleted")],
                "containerStatuses": [_container(container, {"terminated": terminated}, ready=False)],
            })
        except asyncio.CancelledError:
            raise
        except ApiException as exc:
            if exc.status not in (404, 409, 422):
                log.exception("playing pod %s/%s failed", meta["namespace"], meta["name"])
        except Exception:
            log.exception("playing pod %s/%s failed", meta["namespace"], meta["name"])
        finally:
            self.tasks.pop(meta["uid"], None)


def _running(container: str, started: str, *, ready: bool, ip: str) -> dict[str, Any]:
    """A running pod's status; `ip` is its own address (podnet.pod_ip)."""
    flag = "True" if ready else "False"
    return {
        "phase": "Running", "startTime": started, "podIP": ip, "hostIP": "127.0.0.1",
        "podIPs": [{"ip": ip}],
        "conditions": [_cond("PodScheduled", "True"), _cond("Initialized", "True"),
                       _cond("ContainersReady", flag), _cond("Ready", flag)],
        "containerStatuses": [_container(container, {"running": {"startedAt": started}}, ready=ready)],
    }


def _cond(type_: str, status: str, reason: str | None = None) -> dict[str, Any]:
    c = {"type": type_, "status": status, "lastTransitionTime": _now()}
    if reason:
        c["reason"] = reason
    return c


def _container(name: str, state: dict[str, Any], *, ready: bool) -> dict[str, Any]:
    return {"name": name, "state": state, "ready": ready, "restartCount": 0, "image": "spatialforge-dev",
            "imageID": "spatialforge-dev", "started": "running" in state}
