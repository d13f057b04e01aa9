"""What a runner pod may do, as data: the operator creates it, the chart renders it, the
admission policy (crds/policy.py) narrows it further. One source, so the copies cannot drift.
"""

from __future__ import annotations

from typing import Any, Final

from spatialforge.crds.constants import GROUP
from spatialforge.crds.kinds import DEPTH_POOL, PLURALS, STATUS_RESOURCES

# The runner's ServiceAccount in every tenant namespace (the operator's and the chart's default).
RUNNER_SERVICE_ACCOUNT: Final = "spatialforge-runner"


def runner_rules() -> list[dict[str, Any]]:
    """The runner Role's rules: read our resources, read and patch their status; nothing else.
    Which part of the status it may patch is the admission policy's business."""
    return [
        {"apiGroups": [GROUP], "resources": list(PLURALS), "verbs": ["get"]},
        {"apiGroups": [GROUP], "resources": list(STATUS_RESOURCES), "verbs": ["get", "patch"]},
    ]


def pool_cluster_rules() -> list[dict[str, Any]]:
    """The operator's cluster-wide rules for DepthPools (operator/poolctl.py): follow the pools
    and write their status; follow their Deployments and their Services' EndpointSlices.
    Creating Deployments and Services is granted per namespace (the chart's operator Role)."""
    return [
        {"apiGroups": [GROUP], "resources": [DEPTH_POOL.plural], "verbs": ["list", "watch"]},
        {"apiGroups": [GROUP], "resources": [DEPTH_POOL.status_resource], "verbs": ["patch"]},
        {"apiGroups": ["apps"], "resources": ["deployments"], "verbs": ["list", "watch"]},
        {"apiGroups": ["discovery.k8s.io"], "resources": ["endpointslices"], "verbs": ["list", "watch"]},
    ]


def pool_namespace_rules() -> list[dict[str, Any]]:
    """What the operator needs in a namespace whose pools it runs: their Deployment and Service."""
    return [
        {"apiGroups": ["apps"], "resources": ["deployments"], "verbs": ["get", "create", "patch"]},
        {"apiGroups": [""], "resources": ["services"], "verbs": ["create", "patch"]},
    ]
