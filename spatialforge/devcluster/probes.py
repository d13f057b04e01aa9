"""Readiness of a process-mode container, from its own probes, as a kubelet decides it.

A pod the agent runs as a process is Ready only when its readiness probe says so: until then
its Deployment counts it unavailable and `helm install --wait` or a rollout waits, exactly as
in a cluster. `httpGet` (2xx/3xx is success) and `tcpSocket` probes go to the host port the
container port is mapped to (`ports.py`), or to the pod's own IP and port when it listens
there; a `startupProbe`, when declared, must succeed first.
Liveness probes are not run (the agent does not restart containers), nor are `exec` and `grpc`
probes (no container filesystem): a container whose readiness probe is one of those, or that
declares none, is Ready once its process has started.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable
from typing import Any

import aiohttp

log = logging.getLogger(__name__)
StatusCallback = Callable[[bool], Awaitable[None]]


def _host_port(container: dict[str, Any], port: int | str, mapping: dict[int, int]) -> int:
    """The host port behind a probe's `port` (a number or a named container port)."""
    if isinstance(port, str) and not port.isdigit():
        named = [p["containerPort"] for p in container.get("ports") or [] if p.get("name") == port]
        if not named:
            raise ValueError(f"probe port {port!r} is not a declared container port")
        port = named[0]
    port = int(port)
    return mapping.get(port, port)


async def check(probe: dict[str, Any], container: dict[str, Any], mapping: dict[int, int],
                host: str = "127.0.0.1") -> bool:
    """One probe attempt: True on success. Unsupported handlers count as success."""
    timeout = float(probe.get("timeoutSeconds") or 1)
    if "httpGet" in probe:
        get = probe["httpGet"]
        scheme = str(get.get("scheme") or "HTTP").lower()
        target = get.get("host") or host
        path = get.get("path") or "/"
        url = f"{scheme}://{target}:{_host_port(container, get['port'], mapping)}{path}"
        headers = {h["name"]: h["value"] for h in get.get("httpHeaders") or []}
        try:
            async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=timeout)) as session:
                async with session.get(url, headers=headers, allow_redirects=False, ssl=False) as resp:
                    return 200 <= resp.status < 400
        except (aiohttp.ClientError, OSError, TimeoutError):
            return False
    if "tcpSocket" in probe:
        sock = probe["tcpSocket"]
        try:
            _, writer = await asyncio.wait_for(
                asyncio.open_connection(sock.get("host") or host, _host_port(container, sock["port"], mapping)),
                timeout)
        except (OSError, TimeoutError):
            return False
        writer.close()
        return True
    return True


def _supported(probe: dict[str, Any] | None) -> bool:
    return bool(probe) and ("httpGet" in probe or "tcpSocket" in probe)


async def readiness(container: dict[str, Any], mapping: dict[int, int], on_status: StatusCallback,
                    host: str = "127.0.0.1") -> None:
    """Report the container's readiness through `on_status` until cancelled: once at start
    (ready only without a readiness probe to run), then on every change."""
    probe = container.get("readinessProbe")
    if not _supported(probe):
        await on_status(True)
        return
    await on_status(False)
    startup = container.get("startupProbe")
    if _supported(startup):
        await asyncio.sleep(float(startup.get("initialDelaySeconds") or 0))
        while not await check(startup, container, mapping, host):
            await asyncio.sleep(float(startup.get("periodSeconds") or 10))
    await asyncio.sleep(float(probe.get("initialDelaySeconds") or 0))
    period = float(probe.get("periodSeconds") or 10)
    need_ok, need_fail = int(probe.get("successThreshold") or 1), int(probe.get("failureThreshold") or 3)
    ready, streak_ok, streak_fail = False, 0, 0
    while True:
        if await check(probe, container, mapping, host):
            streak_ok, streak_fail = streak_ok + 1, 0
        else:
            streak_ok, streak_fail = 0, streak_fail + 1
        if not ready and streak_ok >= need_ok or ready and streak_fail >= need_fail:
            ready = not ready
            try:
                await on_status(ready)
            except Exception as exc:  # the pod may be going away; keep probing
                log.warning("reporting readiness %s failed: %s", ready, exc)
        await asyncio.sleep(period)
