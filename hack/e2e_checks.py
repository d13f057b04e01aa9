"""The e2e's checks on a real node (run by hack/e2e.sh once the node is up and the images loaded):
install MinIO, Redis and the chart, then run every flow and fault, and print one JSON line.

Everything talks to the cluster as a user would: kubectl and helm with the admin kubeconfig,
boto3 to MinIO and httpx to the front end through their Service addresses (kube-proxy routes the
host's traffic to Service IPs as it does the pods'), the front end's own CLI through `kubectl
exec`. Each step raises with what it saw when it fails; the JSON line is printed either way.
"""

from __future__ import annotations

import contextlib
import json
import os
import secrets
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import boto3
import httpx
import yaml

REPO = Path(__file__).resolve().parent.parent
STATE = Path(os.environ.get("SPATIALFORGE_STATE", REPO / ".local" / "e2e"))
TAG = os.environ.get("TAG", "e2e")
HELM = os.environ["HELM"]
CRICTL = os.environ["CRICTL"]
KUBECTL = str(Path(os.environ["KUBE_DIR"]) / "kubectl")
SYSTEM = "spatialforge-system"
TENANT = "demo"
API_TENANT = "e2e"
API_NS = f"sf-{API_TENANT}"
BUCKET = "spatialforge-demo"
MINIO_IP = "198.19.240.90"  # a fixed Service address in the plane's Service range
S3 = f"http://{MINIO_IP}:9000"
IMAGES = ["operator", "apiserver", "runner", "minio", "redis", "pause"]
TIMEOUT = float(os.environ.get("E2E_TIMEOUT", "900"))


def log(msg: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] e2e: {msg}", file=sys.stderr, flush=True)


def kubectl(*args: str, stdin: str | None = None, check: bool = True) -> str:
    proc = subprocess.run([KUBECTL, *args], input=stdin, capture_output=True, text=True, timeout=300)
    if check and proc.returncode != 0:
        raise RuntimeError(f"kubectl {' '.join(args)}: {proc.stderr.strip()}")
    return proc.stdout


def get(kind: str, name: str, ns: str | None = None) -> dict[str, Any] | None:
    args = ["get", kind, name, "-o", "json"] + (["-n", ns] if ns else [])
    proc = subprocess.run([KUBECTL, *args], capture_output=True, text=True, timeout=60)
    return json.loads(proc.stdout) if proc.returncode == 0 else None


def items(kind: str, ns: str, selector: str | None = None) -> list[dict[str, Any]]:
    args = ["get", kind, "-n", ns, "-o", "json"] + (["-l", selector] if selector else [])
    return json.loads(kubectl(*args))["items"]


def apply(doc: dict[str, Any] | list[dict[str, Any]], ns: str | None = None) -> None:
    docs = doc if isinstance(doc, list) else [doc]
    kubectl("apply", *(["-n", ns] if ns else []), "-f", "-", stdin=yaml.safe_dump_all(docs))


def wait_for(what: str, probe: Callable[[], Any], timeout: float = TIMEOUT, every: float = 0.5) -> Any:
    deadline = time.monotonic() + timeout
    while True:
        value = probe()
        if value:
            return value
        if time.monotonic() > deadline:
            raise TimeoutError(f"{what}: not within {timeout:.0f}s")
        time.sleep(every)


def phase_of(kind: str, name: str, ns: str) -> str:
    return ((get(kind, name, ns) or {}).get("status") or {}).get("phase") or ""


def wait_terminal(kind: str, name: str, ns: str, timeout: float = TIMEOUT) -> str:
    def probe() -> str | None:
        p = phase_of(kind, name, ns)
        return p if p in ("Succeeded", "Failed", "Cancelled") else None
    phase = wait_for(f"{kind}/{name} to finish", probe, timeout)
    if phase != "Succeeded":
        obj = get(kind, name, ns) or {}
        log(f"{kind}/{name} ended {phase}: {json.dumps(obj.get('status'))[:1500]}")
    return phase


def secret(name: str, ns: str, data: dict[str, str]) -> None:
    apply({"apiVersion": "v1", "kind": "Secret", "metadata": {"name": name, "namespace": ns},
           "type": "Opaque", "stringData": data})


# --- the cluster's own servers: MinIO and Redis, from images built here ------------------------


def s3() -> Any:
    return boto3.client("s3", endpoint_url=S3, region_name="us-east-1",
                        aws_access_key_id=CREDS["user"], aws_secret_access_key=CREDS["password"])


CREDS = {"user": "spatialforge", "password": secrets.token_urlsafe(18)}


def deploy_servers() -> None:
    for ns in (SYSTEM, TENANT, API_NS):
        kubectl("create", "namespace", ns, check=False)
    cred_file = STATE / "minio-credentials.json"
    if cred_file.exists():  # a rerun on a kept cluster keeps MinIO's data and its password
        CREDS.update(json.loads(cred_file.read_text()))
    cred_file.write_text(json.dumps(CREDS))
    cred_file.chmod(0o600)
    secret("minio-root", SYSTEM, {"MINIO_ROOT_USER": CREDS["user"], "MINIO_ROOT_PASSWORD": CREDS["password"]})
    pod_security = {"runAsNonRoot": True, "runAsUser": 10001, "runAsGroup": 10001, "fsGroup": 10001,
                    "seccompProfile": {"type": "RuntimeDefault"}}
    container_security = {"allowPrivilegeEscalation": False, "readOnlyRootFilesystem": True,
                          "capabilities": {"drop": ["ALL"]}}

    def server(name: str, image: str, port: int, extra: dict[str, Any], ip: str | None = None) -> list[dict[str, Any]]:
        container = {"name": name, "image": f"spatialforge/{image}:{TAG}", "imagePullPolicy": "Never",
                     "ports": [{"containerPort": port}], "securityContext": container_security,
                     "volumeMounts": [{"name": "data", "mountPath": "/data"}],
                     "readinessProbe": {"tcpSocket": {"port": port}, "periodSeconds": 1}, **extra}
        svc_spec: dict[str, Any] = {"selector": {"app": name}, "ports": [{"port": port}]}
        if ip:
            svc_spec["clusterIP"] = ip
        return [
            {"apiVersion": "apps/v1", "kind": "Deployment", "metadata": {"name": name, "namespace": SYSTEM},
             "spec": {"selector": {"matchLabels": {"app": name}}, "strategy": {"type": "Recreate"},
                      "template": {"metadata": {"labels": {"app": name}},
                                   "spec": {"securityContext": pod_security, "containers": [container],
                                            "volumes": [{"name": "data", "emptyDir": {}}]}}}},
            {"apiVersion": "v1", "kind": "Service", "metadata": {"name": name, "namespace": SYSTEM}, "spec": svc_spec},
        ]

    apply(server("minio", "minio", 9000, {"envFrom": [{"secretRef": {"name": "minio-root"}}],
                                          "env": [{"name": "HOME", "value": "/data"}]}, MINIO_IP))
    apply(server("redis", "redis", 6379, {"command": ["redis-server", "--dir", "/data", "--protected-mode", "no",
                                                      "--appendonly", "yes"]}))
    for name in ("minio", "redis"):
        kubectl("-n", SYSTEM, "rollout", "status", f"deployment/{name}", "--timeout=300s")


def stage_inputs() -> None:
    """Demo images and video, many copies of the images (work that lasts long enough to hit
    mid-shard), a 1-image prefix, and the tiny models the runner pods load from the store."""
    env = {**os.environ, "SPATIALFORGE_S3_ENDPOINT": S3, "AWS_ACCESS_KEY_ID": CREDS["user"],
           "AWS_SECRET_ACCESS_KEY": CREDS["password"], "AWS_REGION": "us-east-1"}
    wait_for("MinIO through its Service", lambda: _answers(f"{S3}/minio/health/ready"), 120)
    subprocess.run([sys.executable, str(REPO / "hack" / "demo_inputs.py"), f"s3://{BUCKET}"], env=env, check=True,
                   stdout=subprocess.DEVNULL)
    client = s3()
    images = [o["Key"] for o in client.list_objects_v2(Bucket=BUCKET, Prefix="inputs/images/")["Contents"]]
    for i in range(24):
        for key in images:
            client.copy_object(Bucket=BUCKET, CopySource={"Bucket": BUCKET, "Key": key},
                               Key=f"inputs/many/{i:02d}-{Path(key).name}")
    INPUTS["image"] = f"s3://{BUCKET}/{images[0]}"
    INPUTS["images"] = len(images)
    models = STATE / "models"
    if not (models / ".complete").exists():
        subprocess.run([sys.executable, "-m", "spatialforge.runner.models.tiny", str(models)], check=True,
                       stdout=subprocess.DEVNULL)
        (models / ".complete").touch()
    for path in models.rglob("*"):
        if path.is_file() and path.name != ".complete":
            client.upload_file(str(path), BUCKET, f"models/{path.relative_to(models)}")


INPUTS: dict[str, Any] = {}


def _answers(url: str) -> bool:
    try:
        return httpx.get(url, timeout=2).status_code < 500
    except httpx.HTTPError:
        return False


# --- the chart ---------------------------------------------------------------------------------


def install_chart() -> None:
    runner_env = {"SPATIALFORGE_S3_ENDPOINT": f"http://minio.{SYSTEM}.svc:9000", "AWS_ACCESS_KEY_ID": CREDS["user"],
                  "AWS_SECRET_ACCESS_KEY": CREDS["password"], "AWS_REGION": "us-east-1",
                  "SPATIALFORGE_MODEL_DIR": f"s3://{BUCKET}/models"}
    for ns in (SYSTEM, TENANT, API_NS):
        secret("spatialforge-objectstore", ns, runner_env)
    secret("spatialforge-redis", SYSTEM, {"url": f"redis://redis.{SYSTEM}.svc:6379/0"})
    secret("spatialforge-stripe", SYSTEM, {"api-key": f"sk_test_{secrets.token_hex(16)}",
                                           "webhook-secret": f"whsec_{secrets.token_hex(16)}"})
    existing = get("secret", "spatialforge-api-keys", SYSTEM)
    if not existing:
        secret("spatialforge-api-keys", SYSTEM, {"hmac-secret": secrets.token_urlsafe(48)})
    values = yaml.safe_load((REPO / "hack" / "e2e-values.yaml").read_text())
    values["apiserver"].setdefault("objectStore", {})["publicEndpoint"] = S3
    values_file = STATE / "e2e-values.yaml"
    values_file.write_text(yaml.safe_dump(values))
    status = subprocess.run([HELM, "status", "spatialforge", "-n", SYSTEM, "-o", "json"], capture_output=True, text=True)
    if status.returncode == 0 and json.loads(status.stdout)["info"]["status"].startswith("pending"):
        log("the release is stuck pending (an install was interrupted): uninstalling it first")
        subprocess.run([HELM, "uninstall", "spatialforge", "-n", SYSTEM, "--wait"], capture_output=True, check=True)
    log("helm upgrade --install spatialforge charts/spatialforge")
    proc = subprocess.run([HELM, "upgrade", "--install", "spatialforge", str(REPO / "charts" / "spatialforge"),
                           "-n", SYSTEM, "-f", str(values_file), "--wait", "--timeout", "10m"],
                          capture_output=True, text=True, env={**os.environ})
    if proc.returncode != 0:
        for pod in items("pods", SYSTEM):
            log(f"pod {pod['metadata']['name']}: {json.dumps(pod['status'].get('containerStatuses'))[:800]}")
        raise RuntimeError(f"helm install: {proc.stderr.strip()}")
    proc = subprocess.run([HELM, "test", "spatialforge", "-n", SYSTEM, "--timeout", "3m"], capture_output=True, text=True)
    if proc.returncode != 0:
        raise RuntimeError(f"helm test: {proc.stderr.strip()} {proc.stdout.strip()}")


def service_url(name: str, port_name: str | None = None) -> str:
    svc = get("service", name, SYSTEM)
    assert svc, f"no Service {name}"
    ports = svc["spec"]["ports"]
    port = next((p for p in ports if p.get("name") == port_name), ports[0]) if port_name else ports[0]
    return f"http://{svc['spec']['clusterIP']}:{port['port']}"


# --- flows -------------------------------------------------------------------------------------


def depth_batch(name: str, inputs: list[str], *, parallelism: int = 1, variant: str = "relative",
                backoff: int = 2) -> dict[str, Any]:
    return {"apiVersion": "spatialforge.io/v1alpha1", "kind": "DepthBatch", "metadata": {"name": name},
            "spec": {"inputs": inputs, "output": {"uri": f"s3://{BUCKET}/results", "formats": ["png16", "npy"]},
                     "model": {"size": "small", "variant": variant}, "parallelism": parallelism,
                     "batchSize": 4, "backoffLimit": backoff, "placement": {"gpus": 1}}}


def samples() -> dict[str, str]:
    kubectl("-n", TENANT, "delete", "depthbatch/sample-depth", "reconstructionjob/sample-reconstruction",
            "--ignore-not-found", "--wait=true")
    kubectl("-n", TENANT, "apply", "-f", str(REPO / "crds/samples/depthbatch.yaml"),
            "-f", str(REPO / "crds/samples/reconstructionjob.yaml"))
    return {"depthbatch": wait_terminal("depthbatch", "sample-depth", TENANT),
            "reconstructionjob": wait_terminal("reconstructionjob", "sample-reconstruction", TENANT)}


def api_key() -> str:
    out = kubectl("-n", SYSTEM, "exec", "deploy/spatialforge-apiserver", "--", "python", "-m",
                  "spatialforge.apiserver.cli", "keys", "create", API_TENANT, "--test")
    return json.loads(out)["key"]


def rest_flow(api: str, key: str) -> dict[str, Any]:
    from spatialforge.client import Client

    out: dict[str, Any] = {}
    with Client(api, key, timeout=60) as client:
        local = STATE / "rest-inputs"
        local.mkdir(exist_ok=True)
        src = s3()
        for i, obj in enumerate(src.list_objects_v2(Bucket=BUCKET, Prefix="inputs/images/")["Contents"][:3]):
            src.download_file(BUCKET, obj["Key"], str(local / f"img{i}{Path(obj['Key']).suffix}"))
        prefix = client.upload(sorted(local.iterdir()))
        results = client.results_prefix()
        job = client.submit_depth({"inputs": [prefix], "output": {"uri": results, "formats": ["png16", "npy"]},
                                   "model": {"size": "small", "variant": "relative"}, "placement": {"gpus": 1}})
        done = client.wait(job["id"], interval=1, timeout=TIMEOUT)
        out["rest_depthbatch"] = done["phase"]
        if done["phase"] == "Succeeded":
            files = client.results(job["id"])["files"]
            fetched = [len(client.fetch(f["url"])) for f in files]
            out["rest_results_fetched"] = sum(1 for n in fetched if n > 0)
        else:
            log(f"REST DepthBatch: {json.dumps(done)[:1500]}")
    return out


def sync_depth(api: str, key: str) -> dict[str, Any]:
    image = s3().get_object(Bucket=BUCKET, Key=INPUTS["image"].split(f"{BUCKET}/", 1)[1])["Body"].read()
    headers = {"Authorization": f"Bearer {key}"}
    r = httpx.post(f"{api}/v1/depth", headers=headers, files={"image": ("img.png", image)}, timeout=60)
    if r.status_code != 200:
        log(f"POST /v1/depth: {r.status_code} {r.text[:500]}")
    timings = []
    for _ in range(5):
        t0 = time.monotonic()
        httpx.post(f"{api}/v1/depth", headers=headers, files={"image": ("img.png", image)}, timeout=60)
        timings.append(time.monotonic() - t0)
    return {"sync_depth_status": r.status_code, "sync_depth_s_median": round(sorted(timings)[2], 3)}


# --- the runner-status policy with a real projected token --------------------------------------


def pod_token(pod: dict[str, Any]) -> str:
    """The projected service-account token the kubelet wrote for the pod, read from its volume."""
    root = Path(os.environ.get("SF_CACHE", Path.home() / ".cache" / "spatialforge")) / "e2e-node" / "kubelet"
    vols = root / "pods" / pod["metadata"]["uid"] / "volumes" / "kubernetes.io~projected"
    tokens = list(vols.glob("kube-api-access-*/token"))
    return tokens[0].read_text() if tokens else ""


def patch_as(token: str, plural: str, name: str, ns: str, status: dict[str, Any]) -> tuple[int, str]:
    kc = yaml.safe_load((STATE / "kubeconfig").read_text())
    server = kc["clusters"][0]["cluster"]["server"]
    ca = kc["clusters"][0]["cluster"]["certificate-authority"]
    r = httpx.patch(f"{server}/apis/spatialforge.io/v1alpha1/namespaces/{ns}/{plural}/{name}/status",
                    headers={"Authorization": f"Bearer {token}", "Content-Type": "application/merge-patch+json"},
                    json={"status": status}, verify=ca, timeout=30)
    return r.status_code, r.text[:300]


def policy_check() -> dict[str, Any]:
    """Two shards of one resource and a second resource: shard 0's token may write its own
    progress, not shard 1's, not the other resource's, not the phase."""
    kubectl("-n", TENANT, "delete", "depthbatch", "policy-a", "policy-b", "--ignore-not-found", "--wait=true")
    apply([depth_batch("policy-a", [f"s3://{BUCKET}/inputs/many/"], parallelism=2),
           depth_batch("policy-b", [f"s3://{BUCKET}/inputs/many/"])], TENANT)

    def token_of_shard0() -> tuple[dict[str, Any], str] | None:
        job = ((get("depthbatch", "policy-a", TENANT) or {}).get("status") or {}).get("jobName")
        if not job:
            return None
        for pod in items("pods", TENANT, f"job-name={job}"):
            index = pod["metadata"].get("annotations", {}).get("batch.kubernetes.io/job-completion-index")
            token = pod_token(pod) if index == "0" else ""
            if token:
                return pod, token
        return None
    pod, token = wait_for("the projected token of policy-a's shard 0", token_of_shard0, TIMEOUT, 0.2)
    now = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
    shard = {"done": 0, "total": 1, "stage": "depth", "updatedAt": now}
    own = patch_as(token, "depthbatches", "policy-a", TENANT, {"progress": {"shards": {"0": shard}}})
    sibling = patch_as(token, "depthbatches", "policy-a", TENANT, {"progress": {"shards": {"1": shard}}})
    other = patch_as(token, "depthbatches", "policy-b", TENANT, {"progress": {"shards": {"0": shard}}})
    phase = patch_as(token, "depthbatches", "policy-a", TENANT, {"phase": "Succeeded"})
    result = {"pod": pod["metadata"]["name"], "own_progress": own[0], "sibling_shard": sibling[0],
              "other_resource": other[0], "own_phase": phase[0]}
    log(f"runner-status policy: {result}; refusal: {sibling[1][:160]}")
    for name in ("policy-a", "policy-b"):
        wait_terminal("depthbatch", name, TENANT)
    return result


# --- time to first result ----------------------------------------------------------------------


def first_result(name: str, variant: str) -> tuple[float, str]:
    kubectl("-n", TENANT, "delete", "depthbatch", name, "--ignore-not-found", "--wait=true")
    t0 = time.monotonic()
    apply(depth_batch(name, [INPUTS["image"]], variant=variant), TENANT)
    phase = wait_for(f"{name} to finish", lambda: phase_of("depthbatch", name, TENANT) in
                     ("Succeeded", "Failed", "Cancelled") and phase_of("depthbatch", name, TENANT), TIMEOUT, 0.1)
    return round(time.monotonic() - t0, 2), phase


def pool_ready() -> bool:
    pool = get("depthpool", "default", SYSTEM) or {}
    return bool((pool.get("status") or {}).get("readyReplicas"))


# --- faults ------------------------------------------------------------------------------------


def container_pid(pod: dict[str, Any]) -> int:
    statuses = pod["status"].get("containerStatuses") or []
    cid = statuses[0]["containerID"].split("://", 1)[1]
    info = json.loads(subprocess.run([CRICTL, "inspect", cid], capture_output=True, text=True, check=True).stdout)
    return int(info["info"]["pid"])


def running_runner(name: str, *, min_done: int = 1) -> dict[str, Any] | None:
    obj = get("depthbatch", name, TENANT) or {}
    status = obj.get("status") or {}
    job = status.get("jobName")
    shards = ((status.get("progress") or {}).get("shards") or {})
    if not job or not any((s or {}).get("done", 0) >= min_done for s in shards.values()):
        return None
    for pod in items("pods", TENANT, f"job-name={job}"):
        if pod["status"].get("phase") == "Running":
            return pod
    return None


def outputs_check(kind: str, name: str, ns: str) -> dict[str, int]:
    """lost: inputs with no output in a published manifest, or listed files missing from the store;
    duplicated: inputs with more than one output, or stored files no manifest lists (staging included)."""
    obj = get(kind, name, ns) or {}
    spec, status = obj.get("spec", {}), obj.get("status", {})
    client = s3()
    base = f"{spec['output']['uri'].rstrip('/')}/{ns}/{name}/".split(f"s3://{BUCKET}/", 1)[1]
    keys = set()
    for page in client.get_paginator("list_objects_v2").paginate(Bucket=BUCKET, Prefix=base):
        keys.update(o["Key"] for o in page.get("Contents", []))
    manifests = [k for k in keys if k.endswith("manifest.json")]
    listed: list[str] = []
    inputs: list[str] = []
    for key in manifests:
        doc = json.loads(client.get_object(Bucket=BUCKET, Key=key)["Body"].read())
        listed += [u.split(f"s3://{BUCKET}/", 1)[1] for u in _uris(doc) if u.startswith(f"s3://{BUCKET}/")]
        inputs += [r["input"] for r in _records(doc)]
    listed_set = set(listed) - set(manifests)
    files = keys - set(manifests)
    lost = len(listed_set - keys)
    duplicated = len(files - listed_set) + (len(inputs) - len(set(inputs)))
    if kind == "DepthBatch":
        expected = _expected_inputs(spec["inputs"])
        lost += len(expected - set(inputs))
    if status.get("phase") != "Succeeded" or not manifests:
        lost += 1
    return {"lost": lost, "duplicated": duplicated}


def _uris(doc: Any) -> Iterator[str]:
    if isinstance(doc, dict):
        for k, v in doc.items():
            if k == "uri" and isinstance(v, str):
                yield v
            else:
                yield from _uris(v)
    elif isinstance(doc, list):
        for v in doc:
            yield from _uris(v)


def _records(doc: Any) -> Iterator[dict[str, Any]]:
    if isinstance(doc, dict):
        if "input" in doc and "outputs" in doc:
            yield doc
            return
        for v in doc.values():
            yield from _records(v)
    elif isinstance(doc, list):
        for v in doc:
            yield from _records(v)


def _expected_inputs(inputs: list[str]) -> set[str]:
    out: set[str] = set()
    client = s3()
    for uri in inputs:
        key = uri.split(f"s3://{BUCKET}/", 1)[1]
        if key.endswith("/"):
            for page in client.get_paginator("list_objects_v2").paginate(Bucket=BUCKET, Prefix=key):
                out.update(f"s3://{BUCKET}/{o['Key']}" for o in page.get("Contents", []))
        else:
            out.add(uri)
    return out


def runner_pods_of(name: str) -> list[dict[str, Any]]:
    job = ((get("depthbatch", name, TENANT) or {}).get("status") or {}).get("jobName")
    return items("pods", TENANT, f"job-name={job}") if job else []


def fault_kill() -> dict[str, Any]:
    name = "fault-kill"
    kubectl("-n", TENANT, "delete", "depthbatch", name, "--ignore-not-found", "--wait=true")
    apply(depth_batch(name, [f"s3://{BUCKET}/inputs/many/"]), TENANT)
    pod = wait_for(f"{name} mid-shard", lambda: running_runner(name), TIMEOUT, 0.2)
    os.kill(container_pid(pod), signal.SIGKILL)
    log(f"{name}: SIGKILL to the runner of {pod['metadata']['name']}")
    phase = wait_terminal("depthbatch", name, TENANT)
    return {"phase": phase, "attempts": len(runner_pods_of(name)), **outputs_check("DepthBatch", name, TENANT)}


def fault_oom() -> dict[str, Any]:
    """The runner goes over its container's memory limit: while it works, the limit of its memory
    cgroup is lowered to just above what the runner holds, so its next allocations meet the
    kernel's OOM killer in that cgroup (the only process there is the runner). A process of our
    own in the container would not do: the killer would pick it (same oom_score_adj, more memory),
    and lowering another's score needs CAP_SYS_RESOURCE, which this machine's root lacks."""
    name = "fault-oom"
    kubectl("-n", TENANT, "delete", "depthbatch", name, "--ignore-not-found", "--wait=true")
    apply(depth_batch(name, [f"s3://{BUCKET}/inputs/many/"]), TENANT)
    pod = wait_for(f"{name} mid-shard", lambda: running_runner(name), TIMEOUT, 0.2)
    cid = pod["status"]["containerStatuses"][0]["containerID"].split("://", 1)[1]
    info = json.loads(subprocess.run([CRICTL, "inspect", cid], capture_output=True, text=True, check=True).stdout)
    cgroup = Path("/sys/fs/cgroup/memory") / info["info"]["runtimeSpec"]["linux"]["cgroupsPath"].lstrip("/")
    stat = dict(line.split() for line in (cgroup / "memory.stat").read_text().splitlines())
    held = int(stat["total_rss"])
    limit = held
    for _ in range(64):  # file pages are reclaimed on the way down; anonymous memory is not (EBUSY)
        try:
            (cgroup / "memory.limit_in_bytes").write_text(str(limit))
            break
        except OSError:
            limit += 2 << 20
    log(f"{name}: memory limit of {pod['metadata']['name']} lowered to {limit >> 20} MiB (held {held >> 20} MiB)")
    first = wait_for(f"{pod['metadata']['name']} terminated", lambda: _terminated(pod), 180)
    log(f"{name}: {pod['metadata']['name']} ended {first}")
    phase = wait_terminal("depthbatch", name, TENANT)
    return {"phase": phase, "first_attempt": first, "attempts": len(runner_pods_of(name)),
            **outputs_check("DepthBatch", name, TENANT)}


def _terminated(pod: dict[str, Any]) -> str | None:
    now = get("pod", pod["metadata"]["name"], TENANT) or {}
    for s in (now.get("status") or {}).get("containerStatuses") or []:
        term = (s.get("state") or {}).get("terminated")
        if term:
            return f"{term.get('reason')} (exit {term.get('exitCode')})"
    return None


def fault_operator() -> dict[str, Any]:
    name = "fault-operator"
    kubectl("-n", TENANT, "delete", "depthbatch", name, "--ignore-not-found", "--wait=true")
    apply(depth_batch(name, [f"s3://{BUCKET}/inputs/many/"], parallelism=2), TENANT)
    wait_for(f"{name} mid-shard", lambda: running_runner(name), TIMEOUT, 0.2)
    lease = get("lease", "spatialforge-operator", SYSTEM) or {}
    leader = (lease.get("spec") or {}).get("holderIdentity") or ""
    victims = [p["metadata"]["name"] for p in items("pods", SYSTEM, "app.kubernetes.io/component=operator")
               if p["metadata"]["name"] == leader] or \
              [p["metadata"]["name"] for p in items("pods", SYSTEM, "app.kubernetes.io/component=operator")][:1]
    kubectl("-n", SYSTEM, "delete", "pod", *victims, "--wait=false")
    log(f"{name}: deleted operator pod(s) {victims} (leader {leader or 'unknown'})")
    phase = wait_terminal("depthbatch", name, TENANT)
    jobs = [j for j in items("jobs", TENANT) if any(o.get("name") == name for o in j["metadata"].get("ownerReferences", []))]
    pods = runner_pods_of(name)
    result = {"phase": phase, "jobs": len(jobs), "attempts": len(pods), **outputs_check("DepthBatch", name, TENANT)}
    result["duplicated"] += max(0, len(jobs) - 1) + max(0, len(pods) - 2)
    return result


# --- the runner image on its own, hardened as the chart runs it ----------------------------------


def runner_image_local() -> dict[str, Any]:
    """`spatialforge run` of a DepthBatch manifest in the runner image under a read-only root, a
    non-root user, no capabilities and no network: writable are only the chart's two emptyDirs
    (/tmp, /cache, here tmpfs) and the folder that plays the object store."""
    work = STATE / "runner-local"
    subprocess.run(["rm", "-rf", str(work)], check=True)
    (work / "in").mkdir(parents=True)
    client = s3()
    for i, obj in enumerate(client.list_objects_v2(Bucket=BUCKET, Prefix="inputs/images/")["Contents"][:2]):
        client.download_file(BUCKET, obj["Key"], str(work / "in" / f"img{i}{Path(obj['Key']).suffix}"))
    manifest = {"apiVersion": "spatialforge.io/v1alpha1", "kind": "DepthBatch",
                "metadata": {"name": "local", "namespace": "local"},
                "spec": {"inputs": ["file://in/"], "output": {"uri": "file://out", "formats": ["png16", "npy"]},
                         "model": {"size": "small", "variant": "relative"}}}
    (work / "job.yaml").write_text(yaml.safe_dump(manifest))
    subprocess.run(["chown", "-R", "10001:10001", str(work)], check=True)
    cmd = ["docker", "run", "--rm", "--read-only", "--user", "10001:10001", "--cap-drop", "ALL",
           "--security-opt", "no-new-privileges", "--network", "none", "--tmpfs", "/tmp", "--tmpfs", "/cache",
           "-v", f"{work}:/work", "-v", f"{STATE / 'models'}:/models:ro", "-w", "/work",
           "-e", "SPATIALFORGE_MODEL_DIR=/models", f"spatialforge/runner:{TAG}",
           "spatialforge", "run", "/work/job.yaml", "--device", "cpu", "--quiet"]
    t0 = time.monotonic()
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=600)
    manifests = list((work / "out").rglob("manifest.json"))
    if proc.returncode != 0 or not manifests:
        log(f"runner image, local run: exit {proc.returncode}: {proc.stderr[-1500:]}")
    return {"exit_code": proc.returncode, "phase": "Succeeded" if proc.returncode == 0 and manifests else "Failed",
            "depth_maps": len(list((work / "out").rglob("*.depth.png"))), "wall_s": round(time.monotonic() - t0, 1)}


# --- report ------------------------------------------------------------------------------------


def image_sizes() -> dict[str, int]:
    out = {}
    for image in IMAGES:
        proc = subprocess.run(["docker", "image", "inspect", "-f", "{{.Size}}", f"spatialforge/{image}:{TAG}"],
                              capture_output=True, text=True)
        if proc.returncode == 0:
            out[image] = int(proc.stdout.strip())
    return out


def runner_pods() -> list[dict[str, Any]]:
    out = []
    for ns in (TENANT, API_NS, SYSTEM):
        for pod in items("pods", ns):
            containers = pod["spec"]["containers"]
            if not any(c["image"].startswith("spatialforge/runner") for c in containers):
                continue
            c = containers[0]
            sc_pod, sc = pod["spec"].get("securityContext") or {}, c.get("securityContext") or {}
            statuses = pod["status"].get("containerStatuses") or [{}]
            out.append({"name": f"{ns}/{pod['metadata']['name']}", "containerID": statuses[0].get("containerID"),
                        "runAsUser": sc.get("runAsUser", sc_pod.get("runAsUser")),
                        "readOnlyRootFilesystem": sc.get("readOnlyRootFilesystem", False),
                        "phase": pod["status"].get("phase")})
    return out


@contextlib.contextmanager
def step(report: dict[str, Any], name: str) -> Iterator[None]:
    t0 = time.monotonic()
    log(f"--- {name}")
    try:
        yield
    except Exception as exc:  # noqa: BLE001  every step reports, the next one still runs
        report.setdefault("errors", {})[name] = f"{type(exc).__name__}: {exc}"[:2000]
        log(f"{name} FAILED: {exc}")
    report.setdefault("step_s", {})[name] = round(time.monotonic() - t0, 1)


def main() -> int:
    t0 = time.monotonic()
    start_epoch = float(os.environ.get("E2E_START_EPOCH", "0"))
    node = json.loads(kubectl("get", "nodes", "-o", "json"))["items"][0]
    report: dict[str, Any] = {
        "cluster": "kubelet",
        "container_runtime": node["status"]["nodeInfo"]["containerRuntimeVersion"],
        "kubelet": node["status"]["nodeInfo"]["kubeletVersion"],
        "images": image_sizes(),
        "image_build_s": int(os.environ.get("E2E_BUILD_S", "0") or 0),
    }
    api = ""
    key = ""
    with step(report, "servers"):
        deploy_servers()
        stage_inputs()
    with step(report, "runner_image_local"):
        report["runner_image_local"] = runner_image_local()
    with step(report, "chart"):
        install_chart()
    with contextlib.suppress(Exception):
        api = service_url("spatialforge-apiserver", "http")
    with step(report, "samples"):
        report.update(samples())
    with step(report, "rest"):
        key = api_key()
        report.update(rest_flow(api, key))
    with step(report, "sync_depth"):
        wait_for("the DepthPool ready", pool_ready, 600)
        report.update(sync_depth(api, key))
    with step(report, "policy"):
        report["runner_status_policy"] = policy_check()
    with step(report, "first_result"):
        cold, cold_phase = first_result("ttfr-cold", "metric-indoor")
        warm, warm_phase = first_result("ttfr-warm", "relative")
        report["first_result_s"] = {"cold_job": cold, "cold_phase": cold_phase,
                                    "warm_pool": warm, "warm_phase": warm_phase}
    faults: dict[str, Any] = {}
    for name, fn in (("runner_killed", fault_kill), ("runner_oom", fault_oom), ("operator_deleted", fault_operator)):
        with step(report, f"fault:{name}"):
            faults[name] = fn()
    report["faults"] = faults
    report["runner_pods"] = runner_pods()
    report["checks_s"] = round(time.monotonic() - t0, 1)
    report["wall_s"] = round(time.time() - start_epoch, 1) if start_epoch else report["checks_s"]
    with contextlib.suppress(Exception):
        report["load_avg"] = os.getloadavg()
    print(json.dumps(report))
    return 1 if report.get("errors") else 0


if __name__ == "__main__":
    sys.exit(main())
