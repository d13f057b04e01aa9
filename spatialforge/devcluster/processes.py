"""Run a pod's container as a real local process, the way a kubelet would run it.

The pod's command, args and env are used as given (`python` means this interpreter; `$(VAR)`
references are expanded as a kubelet does); the process gets a kubeconfig holding a token
minted for the pod's service account, in KUBECONFIG, so its RBAC is exercised exactly as in
a cluster. Env references marked `optional` may be missing; a missing required Secret,
ConfigMap or key raises ConfigError (the kubelet's CreateContainerConfigError). Declared
container ports get free host ports (`ports.py`), since every process shares this machine's
network; readiness comes from the container's own probes (`probes.py`). A deleted pod's
process gets SIGTERM, then SIGKILL after its grace period (capped at `MAX_GRACE_SECONDS`).
"""

from __future__ import annotations

import asyncio
import base64
import logging
import os
import re
import shutil
import signal
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from kubernetes_asyncio import client
from kubernetes_asyncio.client.rest import ApiException

from spatialforge.aio import within
from spatialforge.devcluster import podnet, ports, probes
from spatialforge.devcluster.probes import StatusCallback

log = logging.getLogger(__name__)
TOKEN_AUDIENCE = "https://kubernetes.default.svc.cluster.local"
TERMINATION_LOG_ENV = "SPATIALFORGE_TERMINATION_LOG"
MAX_GRACE_SECONDS = 10.0


@dataclass
class Outcome:
    exit_code: int
    message: str
    reason: str
    started: str | None = None  # when the container started (set by the caller)


def _field(pod: dict[str, Any], path: str) -> str:
    meta = pod["metadata"]
    simple = {
        "metadata.name": meta.get("name"),
        "metadata.namespace": meta.get("namespace"),
        "metadata.uid": meta.get("uid"),
        "spec.nodeName": pod["spec"].get("nodeName"),
        "spec.serviceAccountName": pod["spec"].get("serviceAccountName"),
        "status.podIP": podnet.pod_ip(meta.get("uid", "")),
        "status.hostIP": "127.0.0.1",
    }
    if path in simple:
        return simple[path] or ""
    for prefix, source in (("metadata.annotations", "annotations"), ("metadata.labels", "labels")):
        if path.startswith(prefix + "['"):
            key = path[len(prefix) + 2 : -2]
            return (meta.get(source) or {}).get(key, "")
    raise ValueError(f"unsupported fieldRef {path}")


_REF = re.compile(r"\$\$|\$\(([A-Za-z_][A-Za-z0-9_.-]*)\)")


def expand(value: str, env: dict[str, str]) -> str:
    """Kubernetes' `$(VAR)` references: replaced when VAR is defined, kept as written when not;
    `$$` is an escaped `$`."""
    def sub(m: re.Match[str]) -> str:
        if m.group(0) == "$$":
            return "$"
        return env.get(m.group(1), m.group(0))
    return _REF.sub(sub, value)


class ConfigError(Exception):
    """A Secret or ConfigMap (or a key of one) the container's env needs is missing: the
    kubelet's CreateContainerConfigError. The pod waits and the start is retried."""


async def _read(core: client.CoreV1Api, kind: str, name: str, namespace: str, optional: bool) -> dict[str, str] | None:
    """The data of a Secret (decoded) or ConfigMap; None when it is missing and optional."""
    try:
        if kind == "secret":
            obj = await core.read_namespaced_secret(name, namespace)
            return {k: base64.b64decode(v).decode() for k, v in (obj.data or {}).items()}
        obj = await core.read_namespaced_config_map(name, namespace)
        return dict(obj.data or {})
    except ApiException as exc:
        if exc.status != 404:
            raise
        if optional:
            return None
        raise ConfigError(f'{kind} "{name}" not found') from None


async def _env(core: client.CoreV1Api, pod: dict[str, Any], container: dict[str, Any],
               base: dict[str, str] | None = None) -> dict[str, str]:
    """The container's env as a kubelet builds it: `optional` references may be missing,
    others raise ConfigError; `$(VAR)` in a value refers to `base` (what the agent provides
    to every pod, like the service variables a kubelet adds) or to a variable defined before it."""
    namespace = pod["metadata"]["namespace"]
    base = base or {}
    env: dict[str, str] = {}
    for source in container.get("envFrom") or []:
        prefix = source.get("prefix", "")
        for field, kind in (("secretRef", "secret"), ("configMapRef", "configmap")):
            if field in source:
                ref = source[field]
                data = await _read(core, kind, ref["name"], namespace, bool(ref.get("optional")))
                env.update({prefix + k: v for k, v in (data or {}).items()})
    for item in container.get("env") or []:
        if "value" in item:
            env[item["name"]] = expand(item.get("value") or "", {**base, **env})
            continue
        source = item.get("valueFrom") or {}
        if "fieldRef" in source:
            env[item["name"]] = _field(pod, source["fieldRef"]["fieldPath"])
            continue
        for field, kind in (("secretKeyRef", "secret"), ("configMapKeyRef", "configmap")):
            if field in source:
                ref = source[field]
                optional = bool(ref.get("optional"))
                data = await _read(core, kind, ref["name"], namespace, optional)
                if data is None:
                    break
                if ref["key"] in data:
                    env[item["name"]] = data[ref["key"]]
                elif not optional:
                    raise ConfigError(f"couldn't find key {ref['key']} in {kind} {namespace}/{ref['name']}")
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


def _argv(container: dict[str, Any], env: dict[str, str] | None = None) -> list[str]:
    argv = [expand(a, env or {}) for a in list(container.get("command") or []) + list(container.get("args") or [])]
    if not argv:
        raise ValueError(f"container {container['name']} has no command; the dev agent cannot run images")
    if argv[0] in ("python", "python3"):
        argv[0] = sys.executable
    elif argv[0] == "spatialforge":
        argv = [sys.executable, "-m", "spatialforge.cli", *argv[1:]]
    return argv


async def run(core: client.CoreV1Api, pod: dict[str, Any], state_dir: Path, server: str, ca_file: str,
              on_status: StatusCallback | None = None) -> Outcome:
    """Run the pod's first container to completion; cancellation kills it (pod deleted).

    `on_status(ready)` is awaited once the process has started (ready only when the container
    has no readiness probe) and again whenever its readiness probe result changes. Raises
    ConfigError, before starting anything, when the env's references are missing."""
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
    env.update(await _env(core, pod, container, env))
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
    argv = _argv(container, env)
    own_ip = ports.binds_pod_ip(container)  # listens on its pod IP: its ports are its own
    mapping = {} if own_ip else ports.allocate(container)
    address = podnet.pod_ip(meta["uid"])
    probe_host = address if own_ip else "127.0.0.1"
    if own_ip:
        await podnet.attach(address)
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
            prober = asyncio.create_task(probes.readiness(container, mapping, on_status, host=probe_host)) if on_status else None
            try:
                code = await proc.wait()
            except asyncio.CancelledError:
                grace = pod["spec"].get("terminationGracePeriodSeconds")
                grace = MAX_GRACE_SECONDS if grace is None else min(float(grace), MAX_GRACE_SECONDS)
                await asyncio.shield(_terminate(proc, grace))
                raise
            finally:
                if prober is not None:
                    prober.cancel()
                    await asyncio.gather(prober, return_exceptions=True)
    finally:
        ports.release(mapping)
        if own_ip:
            await podnet.detach(address)
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
        await within(proc.wait(), grace)
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
