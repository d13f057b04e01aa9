"""Register simulated GPU nodes and keep them Ready (node status and leases)."""

from __future__ import annotations

import asyncio
import datetime as dt
import logging

from kubernetes_asyncio import client
from kubernetes_asyncio.client.rest import ApiException

from spatialforge.aio import within

log = logging.getLogger(__name__)
LEASE_NAMESPACE = "kube-node-lease"
HEARTBEAT_SECONDS = 10
GPU_RESOURCE = "nvidia.com/gpu"


def _now() -> str:
    return dt.datetime.now(dt.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def _micro_now() -> str:
    return dt.datetime.now(dt.UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def node_body(name: str, gpus: int) -> dict:
    return {
        "apiVersion": "v1",
        "kind": "Node",
        "metadata": {
            "name": name,
            "labels": {
                "kubernetes.io/hostname": name,
                "kubernetes.io/os": "linux",
                "kubernetes.io/arch": "amd64",
                "nvidia.com/gpu.present": "true",
                "spatialforge.io/devcluster": "true",
            },
        },
        "spec": {},
    }


def node_status(gpus: int) -> dict:
    now = _now()
    capacity = {"cpu": "64", "memory": "256Gi", "pods": "250", "ephemeral-storage": "500Gi", GPU_RESOURCE: str(gpus)}

    def cond(type_: str, status: str, reason: str) -> dict:
        return {"type": type_, "status": status, "reason": reason, "message": "spatialforge dev node agent",
                "lastHeartbeatTime": now, "lastTransitionTime": now}

    return {
        "status": {
            "capacity": capacity,
            "allocatable": capacity,
            "conditions": [
                cond("Ready", "True", "KubeletReady"),
                cond("MemoryPressure", "False", "KubeletHasSufficientMemory"),
                cond("DiskPressure", "False", "KubeletHasNoDiskPressure"),
                cond("PIDPressure", "False", "KubeletHasSufficientPID"),
            ],
            "addresses": [{"type": "InternalIP", "address": "127.0.0.1"}, {"type": "Hostname", "address": "localhost"}],
            "nodeInfo": {
                "machineID": "spatialforge-dev", "systemUUID": "spatialforge-dev", "bootID": "spatialforge-dev",
                "kernelVersion": "", "osImage": "spatialforge dev node", "containerRuntimeVersion": "spatialforge://dev",
                "kubeletVersion": "v0.0.0-spatialforge", "kubeProxyVersion": "", "operatingSystem": "linux",
                "architecture": "amd64",
            },
        }
    }


async def register(core: client.CoreV1Api, name: str, gpus: int) -> None:
    try:
        await core.create_node(node_body(name, gpus))
        log.info("registered node %s with %d GPUs", name, gpus)
    except ApiException as exc:
        if exc.status != 409:
            raise


async def heartbeat(core: client.CoreV1Api, coord: client.CoordinationV1Api, name: str, gpus: int) -> None:
    await core.patch_node_status(name, node_status(gpus))
    lease = {
        "apiVersion": "coordination.k8s.io/v1",
        "kind": "Lease",
        "metadata": {"name": name, "namespace": LEASE_NAMESPACE},
        "spec": {"holderIdentity": name, "leaseDurationSeconds": 40, "renewTime": _micro_now()},
    }
    try:
        await coord.patch_namespaced_lease(name, LEASE_NAMESPACE, {"spec": lease["spec"]})
    except ApiException as exc:
        if exc.status != 404:
            raise
        await coord.create_namespaced_lease(LEASE_NAMESPACE, lease)


async def keep_ready(api: client.ApiClient, names: list[str], gpus: int, stop: asyncio.Event) -> None:
    """Register the nodes, then renew their status and leases until stopped."""
    core, coord = client.CoreV1Api(api), client.CoordinationV1Api(api)
    for name in names:
        await register(core, name, gpus)
    while not stop.is_set():
        for name in names:
            try:
                await heartbeat(core, coord, name, gpus)
            except Exception:  # keep beating; a missed beat is logged, not fatal
                log.exception("heartbeat of %s failed", name)
        await within(stop.wait(), HEARTBEAT_SECONDS)
