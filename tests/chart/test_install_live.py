"""helm install into the local plane with the chart's pods running: the dev node agent runs the
operator and front-end pods as local processes (behaviour rule {"mode": "process"} for the
release namespace). Each declared containerPort gets its own host port, recorded in the pod
annotation devcluster.spatialforge.io/ports, so replicas do not collide on 8080/9090/8000,
and a pod is Ready only once its own readinessProbe passes, so `helm install --wait` waits
for front ends whose /readyz answers (Redis, the Kubernetes API, the object store).

One operator replica must hold the Lease. A sample DepthBatch applied with kubectl, and one
created over REST through the installed front end (tenant plan and key made over REST with
an admin key from the front end's CLI; created on one replica, followed to Succeeded on the
other), reach Succeeded with their runner pods simulated. `helm upgrade` with changed values
rolls the operator replicas, the new ones still run work, and the front ends still answer.
`helm uninstall` leaves only the CRDs and no local process.

The front end's dependencies are real local servers started by hack/ (Redis, stripe-mock,
MinIO) on free ports, referenced by the Secrets the chart expects. The agent gives every
process KUBECONFIG, a kubeconfig for its pod's service account (there is no in-cluster config
here); the operator and the front end both read it, so the chart's values are the defaults.
A chart pod that does not get ready: its output is in
$SPATIALFORGE_STATE/devcluster/pods/<uid>/container.log, the agent's in logs/node-agent.log.
"""

from __future__ import annotations

import base64
import json
import os
import secrets
import subprocess
import sys
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml
from prometheus_client.parser import text_string_to_metric_families

from spatialforge.devcluster import ports
from spatialforge.devcluster.operator_process import OperatorProcess
from spatialforge.devcluster.plane import REPO, STATE, Cluster, wait_for
from spatialforge.devcluster.ports import free_port
from tests.chart.conftest import CHART, Helm, ns, tenants_args
from tests.conftest import Behaviour
from tests.timeouts import LONG, MEDIUM

pytestmark = pytest.mark.integration

NS, TENANT, REL = ns("sf-live"), ns("sf-live-t"), "sfl"
OPERATOR = f"{REL}-spatialforge-operator"
OPERATOR_SELECTOR = f"app.kubernetes.io/instance={REL},app.kubernetes.io/component=operator"
FRONT_SELECTOR = f"app.kubernetes.io/instance={REL},app.kubernetes.io/component=apiserver"
BUCKET = "sf-chart-live"
BACKING_STATE = STATE / "chart-live"
HACK = REPO / "hack"
LEASE = "spatialforge-operator"
NAMESPACED = "deployments,replicasets,pods,services,configmaps,serviceaccounts,roles,rolebindings,networkpolicies," \
             "poddisruptionbudgets,statefulsets,jobs"
PODS_STATE = STATE / "devcluster" / "pods"


@pytest.fixture(scope="module")
def backing() -> Iterator[dict[str, str]]:
    """Redis, stripe-mock and MinIO for the front end, on free ports; stopped afterwards."""
    how = {"redis.sh": "apt-get install redis-server", "stripe-mock.sh": "bash hack/build-tools.sh stripe-mock",
           "minio.sh": "bash hack/build-tools.sh minio"}
    env: dict[str, str] = {}
    started = []
    try:
        for script, port_var, extra in (("redis.sh", "REDIS_PORT", {}), ("stripe-mock.sh", "STRIPE_MOCK_PORT", {}),
                                        ("minio.sh", "MINIO_PORT", {"MINIO_ROOT_PASSWORD": secrets.token_hex(16)})):
            proc = subprocess.run(["bash", str(HACK / script), "up"], capture_output=True, text=True, timeout=120,
                                  env={**os.environ, "SPATIALFORGE_STATE": str(BACKING_STATE),
                                       port_var: str(free_port()), **extra})
            if proc.returncode != 0:
                pytest.fail(f"hack/{script} up failed (get it with: {how[script]}): {proc.stderr.strip()[-2000:]}",
                            pytrace=False)
            started.append(script)
            env.update({k: v for line in proc.stdout.splitlines() if line.startswith("export ")
                        for k, _, v in [line[len("export "):].partition("=")]})
        yield env
    finally:
        for script in reversed(started):
            subprocess.run(["bash", str(HACK / script), "down"], capture_output=True, timeout=60,
                           env={**os.environ, "SPATIALFORGE_STATE": str(BACKING_STATE)})


def _front_end_secrets(cluster: Cluster, backing: dict[str, str], api_secret: str) -> None:
    def secret(name: str, data: dict[str, str]) -> None:
        cluster.apply({"apiVersion": "v1", "kind": "Secret", "metadata": {"name": name, "namespace": NS},
                       "data": {k: base64.b64encode(v.encode()).decode() for k, v in data.items()}})
    secret("spatialforge-redis", {"url": backing["SPATIALFORGE_API_REDIS_URL"]})
    secret("spatialforge-objectstore", {"AWS_ACCESS_KEY_ID": backing["AWS_ACCESS_KEY_ID"],
                                        "AWS_SECRET_ACCESS_KEY": backing["AWS_SECRET_ACCESS_KEY"]})
    secret("spatialforge-stripe", {"api-key": "sk_test_" + secrets.token_hex(24),
                                   "webhook-secret": "whsec_" + secrets.token_hex(24)})
    secret("spatialforge-api-keys", {"hmac-secret": api_secret})


def _front_end_args(backing: dict[str, str]) -> list[str]:
    return ["--set", "apiserver.enabled=true", "--set", "apiserver.rbac.manageTenantNamespaces=true",
            "--set", f"apiserver.objectStore.endpoint={backing['SPATIALFORGE_S3_ENDPOINT']}",
            "--set", f"apiserver.objectStore.bucket={BUCKET}",
            "--set", f"apiserver.stripe.apiBase={backing['SPATIALFORGE_API_STRIPE_API_BASE']}"]


def _front_end_pods(cluster: Cluster) -> list[dict[str, Any]]:
    return [p for p in cluster.list("pods", NS, FRONT_SELECTOR) if not p["metadata"].get("deletionTimestamp")]


def _pod_ready(pod: dict[str, Any]) -> bool:
    conditions = (pod.get("status") or {}).get("conditions") or []
    return any(c["type"] == "Ready" and c["status"] == "True" for c in conditions)


def _ready_front_ends(cluster: Cluster, count: int) -> dict[str, int] | None:
    """{pod name: host port} once `count` front ends answer /readyz 200 on their mapped ports."""
    pods = _front_end_pods(cluster)
    if len(pods) != count:
        return None
    out = {}
    for pod in pods:
        mapping = ports.parse_annotation(pod)
        if 8000 not in mapping:
            return None
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{mapping[8000]}/readyz", timeout=3) as resp:
                if resp.status != 200:
                    return None
        except (OSError, urllib.error.URLError):
            return None
        out[pod["metadata"]["name"]] = mapping[8000]
    return out


def _front_end_logs(pods: list[dict[str, Any]]) -> str:
    """What the front-end processes wrote (the agent keeps each pod's output in container.log)."""
    return "".join((PODS_STATE / p["metadata"]["uid"] / "container.log").read_text(errors="replace") for p in pods)


def _rest(port: int, method: str, path: str, key: str, body: dict[str, Any] | None = None) -> tuple[int, Any]:
    req = urllib.request.Request(f"http://127.0.0.1:{port}{path}", method=method,
                                 data=json.dumps(body).encode() if body is not None else None,
                                 headers={"X-API-Key": key, "Content-Type": "application/json"})
    try:
        with urllib.request.urlopen(req, timeout=30) as resp:
            return resp.status, json.loads(resp.read() or b"null")
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read().decode(errors="replace")


def _admin_key(backing: dict[str, str], api_secret: str) -> str:
    """An admin key made with the front end's own CLI, against the same Redis and secret."""
    env = {**os.environ, "SPATIALFORGE_API_REDIS_URL": backing["SPATIALFORGE_API_REDIS_URL"],
           "SPATIALFORGE_API_SECRET_KEY": api_secret, "SPATIALFORGE_API_DEV_MODE": "1"}
    proc = subprocess.run([sys.executable, "-m", "spatialforge.apiserver.cli", "keys", "create", "ops", "--admin"],
                          capture_output=True, text=True, env=env, timeout=60)
    assert proc.returncode == 0, proc.stderr
    return json.loads(proc.stdout)["key"]


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


def _transitions(port: int, phase: str) -> float:
    """A replica's count of phase transitions to `phase`, all kinds (from its /metrics)."""
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as resp:
        text = resp.read().decode()
    return sum(s.value for family in text_string_to_metric_families(text) for s in family.samples
               if s.name == "spatialforge_operator_phase_transitions_total" and s.labels.get("phase") == phase)


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


def test_install_runs_operator_and_front_end_processes_upgrade_uninstall(
        helm_live: Helm, cluster: Cluster, behaviour: Behaviour, backing: dict[str, str],
        operator: OperatorProcess) -> None:
    # The session's operator watches every namespace: while it runs, a sample would succeed
    # without the chart's operator doing anything. Stopped here, started again at the end.
    operator.stop()
    try:
        _install_run_upgrade_uninstall(helm_live, cluster, behaviour, backing)
    finally:
        operator.start()


def _install_run_upgrade_uninstall(helm_live: Helm, cluster: Cluster, behaviour: Behaviour,
                                   backing: dict[str, str]) -> None:
    for n in (NS, TENANT):
        cluster.apply({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": n}})
    behaviour.set(NS, mode="process")  # the chart's pods: real local processes
    behaviour.set(TENANT, seconds=1)  # the runner pods: simulated one-second runs
    helm_live.run("uninstall", REL, "-n", NS, "--ignore-not-found", check=False)
    api_secret = secrets.token_urlsafe(48)
    _front_end_secrets(cluster, backing, api_secret)
    rest_tenant = f"t{secrets.token_hex(5)}"
    rest_ns = f"sf-{rest_tenant}"  # apiserver.namespacePrefix + tenant id
    behaviour.set(rest_ns, seconds=1)
    seen_uids: set[str] = set()
    try:
        helm_live.run("install", REL, str(CHART), "-n", NS, *_front_end_args(backing),
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

        # A sample applied with kubectl runs to Succeeded under the installed operator: the
        # leading replica counts the transition (no other operator runs, see above).
        succeeded_before = _transitions(replicas[leader]["ports"][9090], "Succeeded")
        cluster.apply(_sample("sample-depth"))
        st = _wait_succeeded(cluster, "sample-depth")
        assert _transitions(replicas[leader]["ports"][9090], "Succeeded") == succeeded_before + 1
        assert st["jobName"]
        assert {c["type"]: c["status"] for c in st["conditions"]}.get("Succeeded") == "True", st["conditions"]

        # Two front ends, both on container port 8000, each on its own host port, ready (Redis,
        # the Kubernetes API through its service account, the object store). The agent marks a
        # pod Ready only once its readinessProbe (/readyz) passes, so `--wait` above already
        # waited for this; the pods' Ready condition and the probe agree.
        fronts = wait_for("2 front ends answering /readyz on their mapped ports",
                          lambda: _ready_front_ends(cluster, 2), MEDIUM, interval=0.5)
        front_pods = _front_end_pods(cluster)
        assert all(_pod_ready(p) for p in front_pods), [p["status"] for p in front_pods]
        seen_uids |= {p["metadata"]["uid"] for p in front_pods}
        assert _processes_of({p["metadata"]["uid"] for p in front_pods}), "no front-end process under the agent's state"
        first, second = sorted(fronts.values())

        # One job over REST: an admin key from the CLI, a tenant with a plan (the front end makes
        # its namespace), the tenant's key, a DepthBatch created on one replica, read on the other.
        admin = _admin_key(backing, api_secret)
        code, body = _rest(first, "PUT", f"/v1/admin/tenants/{rest_tenant}/plan", admin, {"plan": "pro"})
        assert code == 200, body
        code, body = _rest(first, "POST", "/v1/admin/keys", admin, {"tenant": rest_tenant})
        assert code == 201, body
        key = body["key"]
        prefix = f"s3://{BUCKET}/tenants/{rest_tenant}/"
        code, job = _rest(first, "POST", "/v1/depth-batches", key,
                          {"inputs": [f"{prefix}inputs/img-0.jpg"], "output": {"uri": f"{prefix}results"},
                           "placement": {"gpus": 0}})
        assert code == 202, job
        assert cluster.get("depthbatch", job["id"], rest_ns) is not None

        def rest_done() -> dict[str, Any] | None:
            code, got = _rest(second, "GET", f"/v1/jobs/{job['id']}", key)
            assert code in (200, 404), got  # 404 until the other replica's watch cache has it
            assert code == 404 or got["phase"] != "Failed", got
            return got if code == 200 and got["phase"] == "Succeeded" else None
        wait_for(f"REST job {job['id']} Succeeded", rest_done, MEDIUM, interval=0.5)
        rest_cr = cluster.get("depthbatch", job["id"], rest_ns)
        assert rest_cr["status"]["phase"] == "Succeeded" and rest_cr["status"].get("jobName"), rest_cr["status"]
        logs = _front_end_logs(front_pods)
        assert "Logging error" not in logs, logs[-3000:]
        assert "/v1/depth-batches 202" in logs, "the front end's access log (JSON lines) is missing"

        # Upgrade with changed values: the quota and the replica count; the checksum annotation
        # rolls the pods, and a replica of the new template takes over.
        old_leader = replicas[leader]
        old_operator_uids = {r["uid"] for r in replicas.values()}
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
        wait_for("the old operator replicas' processes to stop",
                 lambda: not _processes_of(old_operator_uids), MEDIUM, interval=0.5)
        wait_for("a replica of the upgraded template holding the Lease", lambda: _leader(cluster, replicas),
                 MEDIUM, interval=0.5)
        cluster.apply(_sample("after-upgrade"))
        _wait_succeeded(cluster, "after-upgrade")
        # The front ends came through the upgrade and still answer for the tenant.
        fronts = wait_for("2 front ends ready after the upgrade", lambda: _ready_front_ends(cluster, 2), MEDIUM,
                          interval=0.5)
        seen_uids |= {p["metadata"]["uid"] for p in _front_end_pods(cluster)}
        code, got = _rest(min(fronts.values()), "GET", f"/v1/jobs/{job['id']}", key)
        assert code == 200 and got["phase"] == "Succeeded", got
    finally:
        # Deleting the samples runs the operator's finalizer, so it goes before the operator.
        cluster.kubectl("delete", "depthbatches", "--all", "-n", TENANT, "--timeout=60s", check=False)
        cluster.kubectl("delete", "depthbatches", "--all", "-n", rest_ns, "--timeout=60s", check=False)
        helm_live.run("uninstall", REL, "-n", NS, "--wait", "--timeout", "90s", check=False, timeout=120)
        seen_uids |= {p["metadata"]["uid"] for p in cluster.list("pods", NS)}
    wait_for("nothing of the release left", lambda: not _leftovers(cluster) or None, MEDIUM, interval=1)
    wait_for("no local process of the release's pods", lambda: not _processes_of(seen_uids) or None, MEDIUM,
             interval=0.5)
    for crd in ("depthbatches.spatialforge.io", "reconstructionjobs.spatialforge.io"):
        assert cluster.kubectl("get", "crd", crd, check=False).returncode == 0, f"uninstall removed CRD {crd}"
    cluster.kubectl("delete", "namespace", NS, TENANT, rest_ns, "--wait=false", check=False)
