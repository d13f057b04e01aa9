"""Run a pod's container as a real local process, the way a kubelet would run it.

The pod's command, args and env are used as given (`python` means this interpreter); the
process gets a kubeconfig holding a token minted for the pod's service account, so its
RBAC is exercised exactly as in a cluster. Declared container ports get free host ports
(`ports.py`), since every process shares this machine's network. A deleted pod's process gets
SIGTERM, then SIGKILL after its grace period (capped at `MAX_GRACE_SECONDS`).
"""

from __future__ import annotations

import asyncio
import base64
import logging
import os
import shutil
import signal
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from kubernetes_asyncio import client

from spatialforge.devcluster import ports

log = logging.getLogger(__name__)
TOKEN_AUDIENCE = "https://kubernetes.default.svc.cluster.local"
TERMINATION_LOG_ENV = "SPATIALFORGE_TERMINATION_LOG"
MAX_GRACE_SECONDS = 10.0


@dataclass
class Outcome:
    exit_code: int
    message: str
    reason: str


def _field(pod: dict[str, Any], path: str) -> str:
    meta = pod["metadata"]
    simple = {
        "metadata.name": meta.get("name"),
        "metadata.namespace": meta.get("namespace"),
        "metadata.uid": meta.get("uid"),
        "spec.nodeName": pod["spec"].get("nodeName"),
        "spec.serviceAccountName": pod["spec"].get("serviceAccountName"),
        "status.podIP": "127.0.0.1",
        "status.hostIP": "127.0.0.1",
    }
    if path in simple:
        return simple[path] or ""
    for prefix, source in (("metadata.annotations", "annotations"), ("metadata.labels", "labels")):
        if path.startswith(prefix + "['"):
            key = path[len(prefix) + 2 : -2]
            return (meta.get(source) or {}).get(key, "")
    raise ValueError(f"unsupported fieldRef {path}")


async def _env(core: client.CoreV1Api, pod: dict[str, Any], container: dict[str, Any]) -> dict[str, str]:
    namespace = pod["metadata"]["namespace"]
    env: dict[str, str] = {}
    for source in container.get("envFrom") or []:
        prefix = source.get("prefix", "")
        if "secretRef" in source:
            secret = await core.read_namespaced_secret(source["secretRef"]["name"], namespace)
            env.update({prefix + k: base64.b64decode(v).decode() for k, v in (secret.data or {}).items()})
        elif "configMapRef" in source:
            cm = await core.read_namespaced_config_map(source["configMapRef"]["name"], namespace)
            env.update({prefix + k: v for k, v in (cm.data or {}).items()})
    for item in container.get("env") or []:
        if "value" in item:
            env[item["name"]] = item.get("value") or ""
            continue
        source = item.get("valueFrom") or {}
        if "fieldRef" in source:
            env[item["name"]] = _field(pod, source["fieldRef"]["fieldPath"])
        elif "secretKeyRef" in source:
            ref = source["secretKeyRef"]
            secret = await core.read_namespaced_secret(ref["name"], namespace)
            env[item["name"]] = base64.b64decode((secret.data or {})[ref["key"]]).decode()
        elif "configMapKeyRef" in source:
            ref = source["configMapKeyRef"]
            cm = await core.read_namespaced_config_map(ref["name"], namespace)
            env[item["name"]] = (cm.data or {})[ref["key"]]
    return env


async def _service_account_kubeconfig(core: client.CoreV1Api, pod: dict[str, Any], workdir: Path, server: str, ca_file: str) -> Path:
    meta = pod["metadata"]
    sa = pod["spec"].get("serviceAccountName") or "default"
    request = {
        "apiVersion": "authentication.k8s.io/v1",
        "kind": "TokenRequest",
        "spec": {
            "audiences": [TOKEN_AUDIENCE],
            "expirationSeconds": 3600 * 6,
            "boundObjectRef": {"apiVersion": "v1", "kind": "Pod", "name": meta["name"], "uid": meta["uid"]},
        },
    }
    token = (await core.create_namespaced_service_account_token(sa, meta["namespace"], request)).status.token
    path = workdir / "kubeconfig"
    path.write_text(
        "apiVersion: v1\nkind: Config\n"
        f"clusters: [{{name: c, cluster: {{server: '{server}', certificate-authority: '{ca_file}'}}}}]\n"
        f"users: [{{name: u, user: {{token: '{token}'}}}}]\n"
        f"contexts: [{{name: x, context: {{cluster: c, user: u, namespace: {meta['namespace']}}}}}]\n"
        "current-context: x\n"
    )
    path.chmod(0o600)
    return path


def _argv(container: dict[str, Any]) -> list[str]:
    argv = list(container.get("command") or []) + list(container.get("args") or [])
    if not argv:
        raise ValueError(f"container {container['name']} has no command; the dev agent cannot run images")
    if argv[0] in ("python", "python3"):
        argv[0] = sys.executable
    elif argv[0] == "spatialforge":
        argv = [sys.executable, "-m", "spatialforge.cli", *argv[1:]]
    return argv


async def run(core: client.CoreV1Api, pod: dict[str, Any], state_dir: Path, server: str, ca_file: str) -> Outcome:
    """Run the pod's first container to completion; cancellation kills it (pod deleted)."""
    meta = pod["metadata"]
    container = pod["spec"]["containers"][0]
    workdir = state_dir / "pods" / meta["uid"]
    workdir.mkdir(parents=True, exist_ok=True)
    termination_log = workdir / "termination-log"
    env = {
        "PATH": os.environ.get("PATH", "/usr/bin:/bin"),
        "HOME": str(workdir),
        "TMPDIR": str(workdir),
        "HOSTNAME": meta["name"],
        "LANG": "C.UTF-8",
        "PYTHONUNBUFFERED": "1",
        # Pod-level config the local process cannot get from a mounted volume.
        "KUBECONFIG": str(await _service_account_kubeconfig(core, pod, workdir, server, ca_file)),
        TERMINATION_LOG_ENV: str(termination_log),
    }
    for passthrough in ("SPATIALFORGE_MODEL_DIR", "HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE", "OMP_NUM_THREADS"):
        if passthrough in os.environ:
            env[passthrough] = os.environ[passthrough]
    env.update(await _env(core, pod, container))
    # There is no container filesystem here: an emptyDir mounted where this machine has no
    # such folder (e.g. /cache) becomes a per-pod folder, and env values pointing into it
    # follow. Paths this machine has (e.g. /tmp) are shared with it, as processes share them.
    empty_dirs = {v["name"] for v in pod["spec"].get("volumes") or [] if "emptyDir" in v}
    mounts = {m["mountPath"].rstrip("/"): workdir / "volumes" / m["name"]
              for m in container.get("volumeMounts") or []
              if m["name"] in empty_dirs and not Path(m["mountPath"]).exists()}
    for mount, local in mounts.items():
        local.mkdir(parents=True, exist_ok=True)
        for k, v in env.items():
            if v == mount or v.startswith(mount + "/"):
                env[k] = str(local) + v[len(mount):]
    argv = _argv(container)
    mapping = ports.allocate(container)
    try:
        if mapping:
            env = ports.rewrite_env(env, mapping)
            argv = ports.rewrite_argv(argv, mapping)
            await core.patch_namespaced_pod(meta["name"], meta["namespace"],
                                            {"metadata": {"annotations": {ports.ANNOTATION: ports.annotation_value(mapping)}}})
        log_path = workdir / "container.log"
        with log_path.open("ab") as out:
            proc = await asyncio.create_subprocess_exec(
                *argv, env=env, cwd=workdir, stdout=out, stderr=asyncio.subprocess.STDOUT,
                start_new_session=True,
            )
            try:
                code = await proc.wait()
            except asyncio.CancelledError:
                grace = pod["spec"].get("terminationGracePeriodSeconds")
                grace = MAX_GRACE_SECONDS if grace is None else min(float(grace), MAX_GRACE_SECONDS)
                await asyncio.shield(_terminate(proc, grace))
                raise
    finally:
        ports.release(mapping)
    message = termination_log.read_text()[:4096].strip() if termination_log.exists() else ""
    if not message and code != 0:
        message = _tail(log_path)
    if code < 0:  # killed by a signal: report as a kubelet does (128 + signal)
        code = 128 - code
    reason = "Completed" if code == 0 else ("OOMKilled" if code == 137 else "Error")
    if code == 0:
        shutil.rmtree(workdir, ignore_errors=True)
    return Outcome(code, message, reason)


async def _terminate(proc: asyncio.subprocess.Process, grace: float) -> None:
    """As a kubelet stops a container: SIGTERM, then SIGKILL once the grace period is over."""
    if grace > 0 and proc.returncode is None:
        _signal(proc, signal.SIGTERM)
        try:
            await asyncio.wait_for(proc.wait(), grace)
        except TimeoutError:
            pass
    _signal(proc, signal.SIGKILL)  # the whole session: children too
    await proc.wait()


def _signal(proc: asyncio.subprocess.Process, sig: signal.Signals) -> None:
    try:
        os.killpg(proc.pid, sig)
    except ProcessLookupError:
        pass


def _tail(path: Path, limit: int = 2048) -> str:
    data = path.read_bytes()[-limit:] if path.exists() else b""
    return data.decode(errors="replace").strip()
