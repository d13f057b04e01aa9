"""A runner's real credentials in tests: a token of the namespace's runner ServiceAccount bound
to one pod (a TokenRequest with boundObjectRef, as the kubelet and the dev node agent make them),
so the API server puts the pod's name into the request's user extra, where the runner-status
admission policy reads it."""

from __future__ import annotations

import json
import subprocess
from typing import Any

from spatialforge.crds.rbac import RUNNER_SERVICE_ACCOUNT
from spatialforge.devcluster.plane import Cluster


def bound_token(cluster: Cluster, namespace: str, pod: dict[str, Any],
                account: str = RUNNER_SERVICE_ACCOUNT) -> str:
    meta = pod["metadata"]
    return cluster.kubectl("create", "token", account, "-n", namespace, "--duration=10m",
                           "--bound-object-kind=Pod", f"--bound-object-name={meta['name']}",
                           f"--bound-object-uid={meta['uid']}").stdout.strip()


def unbound_token(cluster: Cluster, namespace: str, account: str = RUNNER_SERVICE_ACCOUNT) -> str:
    return cluster.kubectl("create", "token", account, "-n", namespace, "--duration=10m").stdout.strip()


def patch_status_as(cluster: Cluster, token: str, plural: str, name: str, namespace: str,
                    status: dict[str, Any]) -> subprocess.CompletedProcess[str]:
    """A merge patch of the status subresource, sent with `token` instead of the admin's."""
    return cluster.kubectl("--token", token, "patch", plural, name, "-n", namespace, "--subresource=status",
                           "--type=merge", "-p", json.dumps({"status": status}), check=False)


def stand_in_pod(cluster: Cluster, namespace: str, plural: str, name: str, index: int,
                 account: str = RUNNER_SERVICE_ACCOUNT) -> dict[str, Any]:
    """For tests that run the runner in-process without the operator: name a Job in the
    resource's status (as the operator would) and create the pod an Indexed Job would have as
    shard `index` (`<job>-<index>-<5 random>`), which no node ever takes. A token bound to it
    is what that shard's runner would hold."""
    obj = json.loads(cluster.kubectl("get", plural, name, "-n", namespace, "-o", "json").stdout)
    job = (obj.get("status") or {}).get("jobName")
    if not job:
        job = f"{name}-db{obj['metadata']['uid'][:6]}"
        cluster.kubectl("patch", plural, name, "-n", namespace, "--subresource=status", "--type=merge",
                        "-p", json.dumps({"status": {"jobName": job}}))
    pod = {"apiVersion": "v1", "kind": "Pod",
           "metadata": {"name": f"{job}-{index}-stand", "labels": {"job-name": job}},
           "spec": {"serviceAccountName": account, "nodeSelector": {"spatialforge.io/stand-in": "never"},
                    "containers": [{"name": "runner", "image": "spatialforge/runner"}]}}
    cluster.apply(pod, namespace)
    return json.loads(cluster.kubectl("get", "pod", pod["metadata"]["name"], "-n", namespace, "-o", "json").stdout)
