"""Completion webhooks: SSRF-checked targets, Stripe-style signatures, retries with backoff.

A target must be http(s) and every address its host resolves to must be public, unless the
host or the address is allow-listed (`webhook_allow`: hostnames or CIDRs). The check runs
when the job is submitted and again before every delivery (DNS may change in between).
"""

from __future__ import annotations

import asyncio
import ipaddress
import json
import logging
import socket
import time
from typing import Any
from urllib.parse import urlsplit

import httpx
from redis.asyncio import Redis

from spatialforge.apiserver.core import security

log = logging.getLogger("spatialforge.apiserver.webhooks")
SIGNATURE_HEADER = "SpatialForge-Signature"


class UnsafeTarget(ValueError):
    pass


def _allowed(host: str, addresses: list[ipaddress._BaseAddress], allow: list[str]) -> bool:
    for entry in allow:
        if entry.lower() == host.lower():
            return True
        try:
            net = ipaddress.ip_network(entry, strict=False)
        except ValueError:
            continue
        if addresses and all(a in net for a in addresses):
            return True
    return False


async def check_target(url: str, allow: list[str]) -> None:
    """Raise UnsafeTarget unless `url` may receive webhooks."""
    parts = urlsplit(url)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise UnsafeTarget("webhook URLs must be http(s) with a host")
    if parts.username or parts.password:
        raise UnsafeTarget("webhook URLs must not carry credentials")
    host = parts.hostname
    try:
        addresses = [ipaddress.ip_address(host)]
    except ValueError:
        try:
            infos = await asyncio.get_running_loop().getaddrinfo(host, parts.port or 443, type=socket.SOCK_STREAM)
        except socket.gaierror as exc:
            raise UnsafeTarget(f"webhook host {host!r} does not resolve") from exc
        addresses = [ipaddress.ip_address(info[4][0].split("%")[0]) for info in infos]
    if _allowed(host, addresses, allow):
        return
    for addr in addresses:
        if isinstance(addr, ipaddress.IPv6Address) and addr.ipv4_mapped:
            addr = addr.ipv4_mapped
        if not addr.is_global or addr.is_private or addr.is_loopback or addr.is_link_local \
                or addr.is_multicast or addr.is_reserved or addr.is_unspecified:
            raise UnsafeTarget(f"webhook target {host!r} resolves to a non-public address ({addr})")


def event_body(obj: dict[str, Any], summary: dict[str, Any]) -> bytes:
    meta = obj["metadata"]
    event = {"id": f"evt_{meta['uid']}", "type": f"job.{summary['phase'].lower()}", "created": int(time.time()),
             "data": summary}
    return json.dumps(event, separators=(",", ":"), sort_keys=True).encode()


class WebhookSender:
    def __init__(self, redis: Redis, secret: bytes, allow: list[str], *, attempts: int, backoff: float,
                 timeout: float, metrics: Any) -> None:
        self.redis = redis
        self.secret = secret
        self.allow = allow
        self.attempts = attempts
        self.backoff = backoff
        self.timeout = timeout
        self.metrics = metrics
        self.tasks: set[asyncio.Task[None]] = set()
        self.http = httpx.AsyncClient(timeout=timeout, follow_redirects=False)

    def schedule(self, tenant: str, uid: str, url: str, body: bytes) -> None:
        task = asyncio.create_task(self._deliver(tenant, uid, url, body))
        self.tasks.add(task)
        task.add_done_callback(self.tasks.discard)

    async def _deliver(self, tenant: str, uid: str, url: str, body: bytes) -> None:
        # Once per resource uid, across replicas and restarts.
        if not await self.redis.set(f"webhook:sent:{uid}", "pending", nx=True, ex=7 * 86400):
            return
        secret = security.tenant_webhook_secret(self.secret, tenant)
        for attempt in range(1, self.attempts + 1):
            try:
                await check_target(url, self.allow)
                headers = {"Content-Type": "application/json", "User-Agent": "SpatialForge-Webhooks/1",
                           SIGNATURE_HEADER: security.sign_payload(secret, body)}
                response = await self.http.post(url, content=body, headers=headers)
                if 200 <= response.status_code < 300:
                    await self.redis.set(f"webhook:sent:{uid}", f"delivered:{attempt}", ex=7 * 86400)
                    self.metrics.webhooks.labels("delivered").inc()
                    return
                reason = f"HTTP {response.status_code}"
            except UnsafeTarget as exc:
                log.warning("webhook for %s refused: %s", uid, exc)
                self.metrics.webhooks.labels("refused").inc()
                await self.redis.set(f"webhook:sent:{uid}", "refused", ex=7 * 86400)
                return
            except httpx.HTTPError as exc:
                reason = type(exc).__name__
            self.metrics.webhooks.labels("retry").inc()
            log.info("webhook for %s attempt %d failed (%s)", uid, attempt, reason)
            if attempt < self.attempts:
                await asyncio.sleep(self.backoff * 2 ** (attempt - 1))
        self.metrics.webhooks.labels("failed").inc()
        await self.redis.set(f"webhook:sent:{uid}", "failed", ex=7 * 86400)

    async def close(self) -> None:
        for t in list(self.tasks):
            t.cancel()
        await asyncio.gather(*self.tasks, return_exceptions=True)
        await self.http.aclose()
