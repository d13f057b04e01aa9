"""helm install into the local plane with the chart's pods running: the dev node agent runs the
operator pods as local processes (behaviour rule {"mode": "process"} for the release namespace;
each declared containerPort gets its own host port, recorded in the pod annotation
devcluster.spatialforge.io/ports, so the replicas do not collide on 8080/9090). One replica must
hold the Lease, a sample DepthBatch applied with kubectl must reach Succeeded (its runner pods
simulated), then `helm upgrade` with a changed value rolls the replicas and the new ones still
run work, and `helm uninstall` leaves only the CRDs and no local process.

The front end is not installed here (apiserver.enabled=false): it needs Redis, stripe-mock,
MinIO and four Secrets; see the note at the end of this file.
"""

from __future__ import annotations

import json
import os
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any

import pytest
import yaml

from spatialforge.devcluster import ports
from tests.chart.conftest import CHART, Helm, ns, tenants_args
from tests.cluster import REPO, STATE, Cluster, wait_for
from tests.conftest import Behaviour
from tests.timeouts import LONG, MEDIUM

pytestmark = pytest.mark.integration

NS, TENANT, REL = ns("sf-live"), ns("sf-live-t"), "sfl"
OPERATOR = f"{REL}-spatialforge-operator"
OPERATOR_SELECTOR = f"app.kubernetes.io/instance={REL},app.kubernetes.io/component=operator"
LEASE = "spatialforge-operator"
NAMESPACED = "deployments,replicasets,pods,services,configmaps,serviceaccounts,roles,rolebindings,networkpolicies," \
             "poddisruptionbudgets,statefulsets,jobs"
PODS_STATE = STATE / "devcluster" / "pods"


def _healthz(port: int) -> dict[str, Any] | None:
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/healthz", timeout=2) as resp:
            return json.loads(resp.read())
    except (OSError, urllib.error.URLError, ValueError):
        return None


def _metrics_up(port: int) -> bool:
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=2) as resp:
            return b"spatialforge" in resp.read() or resp.status == 200
    except (OSError, urllib.error.URLError):
        return False


def _operator_pods(cluster: Cluster) -> list[dict[str, Any]]:
    return [p for p in cluster.list("pods", NS, OPERATOR_SELECTOR) if not p["metadata"].get("deletionTimestamp")]


def _running_replicas(cluster: Cluster, count: int, template_hash: str | None = None) -> dict[str, dict[str, Any]] | None:
    """{pod name: {"ports": mapping, "health": /healthz answer}} once `count` replicas (of the
    given pod-template hash, if any) have their ports annotated and answer on them."""
    pods = _operator_pods(cluster)
    if template_hash is not None:
        pods = [p for p in pods if p["metadata"]["labels"].get("pod-template-hash") == template_hash]
    if len(pods) != count:
        return None
    out = {}
    for pod in pods:
        mapping = ports.parse_annotation(pod)
        if set(mapping) != {8080, 9090}:
            return None
        health = _healthz(mapping[8080])
        if health is None or health.get("status") != "ok" or not _metrics_up(mapping[9090]):
            return None
        out[pod["metadata"]["name"]] = {"ports": mapping, "health": health, "uid": pod["metadata"]["uid"]}
    return out


def _leader(cluster: Cluster, replicas: dict[str, dict[str, Any]]) -> str | None:
    """The replica holding the Lease, when it also reports itself leader on /healthz."""
    lease = cluster.get("lease", LEASE, NS)
    holder = ((lease or {}).get("spec") or {}).get("holderIdentity")
    if holder not in replicas:
        return None
    return holder if _healthz(replicas[holder]["ports"][8080]) == {"status": "ok", "role": "leader"} else None


def _processes_of(uids: set[str]) -> list[str]:
    """Local processes whose working directory is one of these pods' agent folders."""
    found = []
    for proc in Path("/proc").iterdir():
        if not proc.name.isdigit():
            continue
        try:
            cwd = os.readlink(proc / "cwd")
        except OSError:
            continue
        for uid in uids:
            if cwd == str(PODS_STATE / uid) or cwd.startswith(str(PODS_STATE / uid) + "/"):
                found.append(f"{proc.name} ({uid})")
    return found


def _sample(name: str) -> dict[str, Any]:
    doc = yaml.safe_load((REPO / "crds" / "samples" / "depthbatch.yaml").read_text())
    doc["metadata"] = {"name": name, "namespace": TENANT}
    return doc


def _wait_succeeded(cluster: Cluster, name: str) -> dict[str, Any]:
    def probe() -> dict[str, Any] | None:
        st = ((cluster.get("depthbatch", name, TENANT) or {}).get("status")) or {}
        assert st.get("phase") != "Failed", f"{name} failed: {st}"
        return st if st.get("phase") == "Succeeded" else None
    return wait_for(f"DepthBatch {name} Succeeded", probe, MEDIUM, interval=0.5)


def _leftovers(cluster: Cluster) -> list[str]:
    names = []
    sel = f"app.kubernetes.io/instance={REL}"
    for args in (["-n", NS, "get", NAMESPACED, "-l", sel], ["-n", TENANT, "get", NAMESPACED, "-l", sel],
                 ["get", "clusterroles,clusterrolebindings", "-l", sel], ["-n", NS, "get", "pods"]):
        out = cluster.kubectl(*args, "-o", "json").stdout
        names += [f"{o['kind']}/{o['metadata']['name']}" for o in json.loads(out)["items"]]
    return sorted(set(names))


def test_install_runs_operator_processes_upgrade_uninstall(helm_live: Helm, cluster: Cluster,
                                                          behaviour: Behaviour) -> None:
    for n in (NS, TENANT):
        cluster.apply({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": n}})
    behaviour.set(NS, mode="process")  # the chart's pods: real local processes
    behaviour.set(TENANT, seconds=1)  # the runner pods: simulated one-second runs
    helm_live.run("uninstall", REL, "-n", NS, "--ignore-not-found", check=False)
    seen_uids: set[str] = set()
    try:
        helm_live.run("install", REL, str(CHART), "-n", NS, "--set", "apiserver.enabled=false",
                      "--set", "operator.quotas.gpuBudget=8", "--set", "operator.leaderElection.leaseDurationSeconds=6",
                      *tenants_args(TENANT), "--wait", "--timeout", "120s", timeout=180)

        # Two replicas run as processes on distinct host ports; one leads through the Lease.
        replicas = wait_for("2 operator processes answering /healthz and /metrics on their mapped ports",
                            lambda: _running_replicas(cluster, 2), MEDIUM, interval=0.5)
        seen_uids |= {r["uid"] for r in replicas.values()}
        host_ports = [p for r in replicas.values() for p in r["ports"].values()]
        assert len(set(host_ports)) == 4, f"replicas share host ports: {replicas}"
        leader = wait_for("one replica holding the Lease", lambda: _leader(cluster, replicas), MEDIUM, interval=0.5)
        roles = sorted(_healthz(r["ports"][8080])["role"] for r in replicas.values())
        assert roles == ["leader", "standby"], roles
        assert _processes_of(seen_uids), "the operator pods' processes are not found under the agent's state"

        # A sample applied with kubectl runs to Succeeded under the installed operator.
        cluster.apply(_sample("sample-depth"))
        st = _wait_succeeded(cluster, "sample-depth")
        assert st["jobName"]
        assert {c["type"]: c["status"] for c in st["conditions"]}.get("Succeeded") == "True", st["conditions"]

        # Upgrade with changed values: the quota and the replica count; the checksum annotation
        # rolls the pods, and a replica of the new template takes over.
        old_leader = replicas[leader]
        helm_live.run("upgrade", REL, str(CHART), "-n", NS, "--reuse-values", "--set", "operator.replicas=3",
                      "--set", "operator.quotas.gpuBudget=4", "--wait", "--timeout", "120s", timeout=180)
        assert cluster.get("configmap", "spatialforge-quotas", NS)["data"] == {"gpuBudget": "4"}
        dep = cluster.get("deployment", OPERATOR, NS)
        assert dep["spec"]["replicas"] == 3
        rs = [r for r in cluster.list("replicasets", NS, OPERATOR_SELECTOR) if r["spec"]["replicas"] == 3]
        assert len(rs) == 1, "expected one ReplicaSet scaled to 3 after the upgrade"
        new_hash = rs[0]["metadata"]["labels"]["pod-template-hash"]
        replicas = wait_for("3 operator processes of the upgraded template",
                            lambda: _running_replicas(cluster, 3, new_hash), LONG, interval=0.5)
        seen_uids |= {r["uid"] for r in replicas.values()}
        assert old_leader["uid"] not in {r["uid"] for r in replicas.values()}
        wait_for("the old replicas' processes to stop",
                 lambda: not _processes_of(seen_uids - {r["uid"] for r in replicas.values()}), MEDIUM, interval=0.5)
        wait_for("a replica of the upgraded template holding the Lease", lambda: _leader(cluster, replicas),
                 MEDIUM, interval=0.5)
        cluster.apply(_sample("after-upgrade"))
        _wait_succeeded(cluster, "after-upgrade")
    finally:
        # Deleting the samples runs the operator's finalizer, so it goes before the operator.
        cluster.kubectl("delete", "depthbatches", "--all", "-n", TENANT, "--timeout=60s", check=False)
        helm_live.run("uninstall", REL, "-n", NS, "--wait", "--timeout", "90s", check=False, timeout=120)
        seen_uids |= {p["metadata"]["uid"] for p in cluster.list("pods", NS)}
    wait_for("nothing of the release left", lambda: not _leftovers(cluster) or None, MEDIUM, interval=1)
    wait_for("no local process of the release's pods", lambda: not _processes_of(seen_uids) or None, MEDIUM,
             interval=0.5)
    for crd in ("depthbatches.spatialforge.io", "reconstructionjobs.spatialforge.io"):
        assert cluster.kubectl("get", "crd", crd, check=False).returncode == 0, f"uninstall removed CRD {crd}"
    cluster.kubectl("delete", "namespace", NS, TENANT, "--wait=false", check=False)
