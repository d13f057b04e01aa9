"""helm install into the local plane, upgrade with a changed value, roll back, uninstall: only
the CRDs remain. Checks the objects only: the pods are simulated by the dev node agent, and
the front end has no Secrets or dependencies here. tests/chart/test_install_live.py runs the
operator and front-end pods as local processes and sends work through both."""

from __future__ import annotations

import json

import pytest

from spatialforge.devcluster.plane import Cluster, wait_for
from tests.chart.conftest import CHART, Helm, ns
from tests.timeouts import MEDIUM

pytestmark = pytest.mark.integration

NS, REL = ns("sf-install"), "sfi"
NAMESPACED = "deployments,replicasets,pods,services,configmaps,serviceaccounts,roles,rolebindings,networkpolicies," \
             "poddisruptionbudgets,statefulsets"


def _leftovers(cluster: Cluster) -> list[str]:
    sel = f"app.kubernetes.io/instance={REL}"
    names = []
    for args in (["-n", NS, "get", NAMESPACED], ["get", "clusterroles,clusterrolebindings"]):
        out = cluster.kubectl(*args, "-l", sel, "-o", "json").stdout
        names += [f"{o['kind']}/{o['metadata']['name']}" for o in json.loads(out)["items"]]
    return names


def test_install_upgrade_rollback_uninstall(helm_live: Helm, cluster: Cluster) -> None:
    cluster.apply({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": NS}})
    helm_live.run("uninstall", REL, "-n", NS, "--ignore-not-found", check=False)
    try:
        helm_live.run("install", REL, str(CHART), "-n", NS, "--set", "apiserver.enabled=true")
        dep = json.loads(cluster.kubectl("-n", NS, "get", "deployment", f"{REL}-spatialforge-operator", "-o", "json").stdout)
        assert dep["spec"]["replicas"] == 2
        assert cluster.get("configmap", "spatialforge-quotas", NS) is not None

        helm_live.run("upgrade", REL, str(CHART), "-n", NS, "--reuse-values", "--set", "operator.replicas=3",
                      "--set", "operator.quotas.gpuBudget=4")
        dep = json.loads(cluster.kubectl("-n", NS, "get", "deployment", f"{REL}-spatialforge-operator", "-o", "json").stdout)
        assert dep["spec"]["replicas"] == 3
        assert cluster.get("configmap", "spatialforge-quotas", NS)["data"] == {"gpuBudget": "4"}
        history = json.loads(helm_live.run("history", REL, "-n", NS, "-o", "json").stdout)
        assert [h["revision"] for h in history] == [1, 2] and history[-1]["status"] == "deployed"

        helm_live.run("rollback", REL, "1", "-n", NS)
        dep = json.loads(cluster.kubectl("-n", NS, "get", "deployment", f"{REL}-spatialforge-operator", "-o", "json").stdout)
        assert dep["spec"]["replicas"] == 2
        assert not (cluster.get("configmap", "spatialforge-quotas", NS) or {}).get("data")
    finally:
        helm_live.run("uninstall", REL, "-n", NS, "--wait", "--timeout", "60s", check=False)
    wait_for("nothing of the release left", lambda: not _leftovers(cluster) or None, MEDIUM, interval=1)
    for crd in ("depthbatches.spatialforge.io", "reconstructionjobs.spatialforge.io"):
        assert cluster.kubectl("get", "crd", crd, check=False).returncode == 0, f"uninstall removed CRD {crd}"
    cluster.kubectl("delete", "namespace", NS, "--wait=false", check=False)
