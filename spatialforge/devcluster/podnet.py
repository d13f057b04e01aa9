"""Pod IPs on the local plane: each pod its own address on this host, so Services'
EndpointSlices list addresses that reach it, as in a cluster.

The API server refuses loopback addresses in EndpointSlices, so a pod's address comes from
198.18.0.0/16 (half of the benchmarking range 198.18.0.0/15, never routed; the other half,
198.19.0.0/16, holds the Docker bridge and the real node of hack/e2e.sh) and the agent adds it to `lo`
as a /32 while the pod's process runs (`ip addr add`, which needs CAP_NET_ADMIN: root in a
container or a dev VM). Without that capability pods get 127.x.y.z addresses (Linux routes all
of 127.0.0.0/8 to lo, so processes still bind and reach them), and the endpointslice controller
cannot publish them: the agent says so at start. Addresses are derived from the pod's uid,
so they are stable across agent restarts and do not collide between planes on one host.
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
import shutil
import subprocess

log = logging.getLogger(__name__)
ROUTABLE_PREFIX = "198.18.0.0/16"
_routable = False  # set by configure()


def configure() -> bool:
    """Whether this agent can give pods addresses EndpointSlices accept (adds and removes a
    probe address on lo to find out); pod_ip follows the answer."""
    global _routable
    probe = "198.18.255.254"
    ip = shutil.which("ip")
    if ip is None:
        _routable = False
    else:
        added = subprocess.run([ip, "addr", "add", f"{probe}/32", "dev", "lo"], capture_output=True, text=True)
        _routable = added.returncode == 0 or "File exists" in added.stderr
        if added.returncode == 0:
            subprocess.run([ip, "addr", "del", f"{probe}/32", "dev", "lo"], capture_output=True)
    if not _routable:
        log.warning("cannot add addresses to lo (needs iproute2 and CAP_NET_ADMIN): pods get 127.x.y.z "
                    "addresses, which EndpointSlices refuse, so Services list no endpoints")
    return _routable


def routable() -> bool:
    return _routable


def pod_ip(uid: str) -> str:
    """The pod's own address, derived from its uid: 198.18.x.y when routable, else
    127.a.b.c (never 127.0.0.1, where the host's own services listen)."""
    d = hashlib.sha256(uid.encode()).digest()
    if _routable:
        return f"198.18.{d[1]}.{1 + d[2] % 254}"
    return f"127.{1 + d[0] % 254}.{d[1]}.{1 + d[2] % 254}"


async def _ip(*args: str) -> tuple[int, str]:
    proc = await asyncio.create_subprocess_exec("ip", *args, stdout=asyncio.subprocess.DEVNULL,
                                                stderr=asyncio.subprocess.PIPE)
    _, err = await proc.communicate()
    return proc.returncode or 0, err.decode(errors="replace").strip()


async def attach(address: str) -> None:
    """Put the pod's address on lo (no-op for 127.x: already local)."""
    if address.startswith("127."):
        return
    code, err = await _ip("addr", "add", f"{address}/32", "dev", "lo")
    if code != 0 and "File exists" not in err:
        raise OSError(f"ip addr add {address}/32 dev lo failed: {err}")


async def detach(address: str) -> None:
    if address.startswith("127."):
        return
    code, err = await _ip("addr", "del", f"{address}/32", "dev", "lo")
    if code != 0 and "Cannot assign" not in err:
        log.warning("ip addr del %s/32 dev lo failed: %s", address, err)
