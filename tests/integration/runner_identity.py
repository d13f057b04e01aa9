"""A runner's real credentials in tests: a token of the namespace's runner ServiceAccount bound
to one pod (a TokenRequest with boundObjectRef, as the kubelet and the dev node agent make them),
so the API server puts the pod's name into the request's user extra, where the runner-status
admission policy reads it."""

from __future__ import annotations

import json
import subprocess
from typing import Any

from spatialforge.crds.rbac import RUNNER_SERVICE_ACCOUNT
from tests.cluster import Cluster


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
