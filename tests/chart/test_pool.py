"""The chart's default DepthPool and its autoscaler (both off by default), and the operator's
rights over pools, rendered without a cluster."""

from __future__ import annotations

from typing import Any

from spatialforge.crds.v1alpha1.depthpool import DepthPool
from tests.chart.conftest import Helm, find


def kinds(objects: list[dict[str, Any]]) -> set[str]:
    return {o["kind"] for o in objects}


def test_no_pool_and_no_autoscaler_by_default(helm: Helm) -> None:
    assert not {"DepthPool"} & kinds(helm.render())
    assert not [o for o in helm.render("--set", "pool.autoscaling.enabled=true")
                if o["kind"] == "HorizontalPodAutoscaler" and "pool" in o["metadata"]["name"]]


def test_default_pool_validates_and_the_autoscaler_targets_its_scale_subresource(helm: Helm) -> None:
    objects = helm.render("--set", "pool.enabled=true", "--set", "pool.replicas=2", "--set", "pool.gpusPerReplica=2")
    pool = DepthPool.model_validate(find(objects, "DepthPool"))
    assert (pool.metadata["name"], pool.spec.replicas, pool.spec.gpus_per_replica) == ("default", 2, 2)
    assert pool.metadata["namespace"] == "spatialforge-system"

    objects = helm.render("--set", "pool.enabled=true", "--set", "pool.autoscaling.enabled=true",
                          "--set", "pool.minReplicas=0", "--set", "pool.maxReplicas=6")
    hpa = find(objects, "HorizontalPodAutoscaler", "-pool-default")
    assert hpa["spec"]["scaleTargetRef"] == {"apiVersion": "spatialforge.io/v1alpha1", "kind": "DepthPool",
                                             "name": "default"}
    assert (hpa["spec"]["minReplicas"], hpa["spec"]["maxReplicas"]) == (1, 6)
    # The autoscaler owns spec.replicas: the chart leaves it out, so an upgrade does not reset it.
    assert "replicas" not in find(objects, "DepthPool")["spec"]


def test_operator_may_run_pools_in_its_own_namespace_only(helm: Helm) -> None:
    objects = helm.render()
    cluster_rules = find(objects, "ClusterRole", "-operator")["rules"]
    own_rules = find(objects, "Role", "-operator")["rules"]

    def may(rules: list[dict[str, Any]], group: str, resource: str, verb: str) -> bool:
        return any(group in r["apiGroups"] and resource in r["resources"] and verb in r["verbs"] for r in rules)

    assert may(cluster_rules, "spatialforge.io", "depthpools", "watch")
    assert may(cluster_rules, "spatialforge.io", "depthpools/status", "patch")
    assert may(cluster_rules, "discovery.k8s.io", "endpointslices", "watch")
    assert may(cluster_rules, "apps", "deployments", "watch") and not may(cluster_rules, "apps", "deployments", "create")
    assert not may(cluster_rules, "", "services", "create")
    assert may(own_rules, "apps", "deployments", "create") and may(own_rules, "apps", "deployments", "patch")
    assert may(own_rules, "", "services", "create")
