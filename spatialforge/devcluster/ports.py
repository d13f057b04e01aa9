"""Host ports for container ports: every process shares this machine's network.

In a cluster each pod has its own network namespace, so two replicas can both listen on
8080. Here they are processes on one host, so, like a kubelet's port mapping, the agent gives
each declared `containerPort` a free host port, rewrites the container's command, args and env
to use it, and records the mapping on the pod as the annotation `ANNOTATION` (JSON, container
port to host port, e.g. `{"8000": 41234}`) so tests and people can reach the process.

A pod that binds its own pod IP needs none of this: each pod gets its own address on this host
(podnet.py) as status.podIP, so a pod whose env takes `status.podIP` (a fieldRef) and listens
there keeps its declared ports, and the EndpointSlices Kubernetes publishes for its Service
carry addresses that really reach it (`binds_pod_ip`). Other pods (servers listening on 0.0.0.0) still get remapped ports.

What is rewritten (the forms a port takes on a command line or in env):
* env values equal to the port number (`SPATIALFORGE_HEALTH_PORT=8080`);
* argv tokens that are exactly the port, or end in `=<port>` or `:<port>`
  (`--port=8000`, `--bind=0.0.0.0:8000`, `8000` after `--port`).
"""

from __future__ import annotations

import json
import socket
from typing import Any

ANNOTATION = "devcluster.spatialforge.io/ports"


def binds_pod_ip(container: dict[str, Any]) -> bool:
    """Whether the container is told its pod IP (env fieldRef status.podIP), i.e. listens on
    its own address: its ports are then its own and are not remapped."""
    return any(((item.get("valueFrom") or {}).get("fieldRef") or {}).get("fieldPath") == "status.podIP"
               for item in container.get("env") or [])


_held: set[int] = set()  # host ports handed out to live processes


def declared(container: dict[str, Any]) -> list[int]:
    """Container ports the container declares, in order, without duplicates."""
    seen: list[int] = []
    for p in container.get("ports") or []:
        port = int(p["containerPort"])
        if port not in seen:
            seen.append(port)
    return seen


def free_port(host: str = "127.0.0.1") -> int:
    """A TCP port free on `host` now (the kernel's pick), for a server about to be started there.

    The one helper for tests, benches and the node agent; a port this agent handed out
    (`allocate`) is never returned again while it is held.
    """
    for _ in range(64):
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
            s.bind((host, 0))
            port = int(s.getsockname()[1])
        if port not in _held:
            return port
    raise RuntimeError(f"no free port on {host}")


def allocate(container: dict[str, Any]) -> dict[int, int]:
    """A free host port for each declared container port (held until `release`)."""
    mapping = {}
    for port in declared(container):
        host = free_port("0.0.0.0")  # free on every interface, as a server binding 0.0.0.0 needs
        _held.add(host)
        mapping[port] = host
    return mapping


def release(mapping: dict[int, int]) -> None:
    for host in mapping.values():
        _held.discard(host)


def rewrite_token(token: str, mapping: dict[int, int]) -> str:
    for port, host in mapping.items():
        p = str(port)
        if token == p:
            return str(host)
        for sep in ("=", ":"):
            if token.endswith(sep + p):
                return token[: -len(p)] + str(host)
    return token


def rewrite_argv(argv: list[str], mapping: dict[int, int]) -> list[str]:
    return [rewrite_token(t, mapping) for t in argv]


def rewrite_env(env: dict[str, str], mapping: dict[int, int]) -> dict[str, str]:
    by_value = {str(port): str(host) for port, host in mapping.items()}
    return {k: by_value.get(v, v) for k, v in env.items()}


def annotation_value(mapping: dict[int, int]) -> str:
    return json.dumps({str(port): host for port, host in mapping.items()}, sort_keys=True)


def parse_annotation(pod: dict[str, Any]) -> dict[int, int]:
    """The mapping recorded on a pod ({} when none)."""
    raw = ((pod.get("metadata") or {}).get("annotations") or {}).get(ANNOTATION)
    return {int(k): int(v) for k, v in json.loads(raw).items()} if raw else {}
