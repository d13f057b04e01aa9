"""Completion webhooks: SSRF-checked targets, Stripe-style signatures, durable retries with backoff.

A target must be http(s) and every address its host resolves to must be public (IPv6 forms
that embed a private IPv4 address, 6to4, NAT64 and Teredo, included), unless the host or the
address is allow-listed (`webhook_allow`: hostnames or CIDRs). The check runs when the job is
submitted and again in every delivery attempt, inside the HTTP transport (`PinnedTransport`):
the connection goes to an address that was checked, never to a second DNS answer.

Deliveries live in Redis, not in the process, so a restart (or another replica) carries on
where a stopped one left off:

    webhook:sent:{uid}       "pending" | "delivered:<n>" | "failed" | "refused" (7 days);
                             SET NX of "pending" is the once-per-uid enqueue
    webhook:delivery:{uid}   hash: tenant, url, body, attempts, next_at, created, lease, last_error
    webhook:due              sorted set of uids by the time they are due (or their lease ends)
    webhook:failures:{t}     list of the tenant's given-up deliveries (JSON, newest first, 100)

A worker claims due uids with one Lua script that moves their score to now + lease and
writes a fresh lease token into the hash; it then POSTs and settles with a second script
that only acts while the token is still its own. A claimer that dies mid-attempt is retried
by whoever claims the uid once its lease runs out; a claimer whose lease ran out cannot
record anything. An attempt is bounded by `timeout` and the lease is longer than that, so
two replicas never both POST the same event unless a process is frozen for longer than its
lease (receivers should still de-duplicate on the event id, as for any webhook).
"""

from __future__ import annotations

import asyncio
import ipaddress
import json
import logging
import secrets
import socket
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlsplit

import httpx
from redis.asyncio import Redis

from spatialforge.aio import cancel_and_wait, within
from spatialforge.apiserver.core import security
from spatialforge.apiserver.errors import InvalidRequest

log = logging.getLogger("spatialforge.apiserver.webhooks")
SIGNATURE_HEADER = "SpatialForge-Signature"


class UnsafeTarget(InvalidRequest):
    """The webhook URL may not receive webhooks (422 `unsafe_webhook` at submission)."""

    code = "unsafe_webhook"


Address = ipaddress.IPv4Address | ipaddress.IPv6Address
Resolver = Callable[[str, int], Awaitable[list[Address]]]
"""(host, port) -> the addresses to connect to; injected in tests."""

# NAT64 prefixes (RFC 6052 well-known, RFC 8215 local use): the last 32 bits are an IPv4 address.
_NAT64 = (ipaddress.ip_network("64:ff9b::/96"), ipaddress.ip_network("64:ff9b:1::/48"))


async def system_resolver(host: str, port: int) -> list[Address]:
    infos = await asyncio.get_running_loop().getaddrinfo(host, port, type=socket.SOCK_STREAM)
    return [ipaddress.ip_address(str(info[4][0]).split("%")[0]) for info in infos]


@dataclass(frozen=True)
class Target:
    """A checked webhook target: connect only to `addresses`."""

    host: str
    port: int
    addresses: list[Address]


def _embedded_ipv4(addr: ipaddress.IPv6Address) -> ipaddress.IPv4Address | None:
    """The IPv4 address an IPv6 form carries: mapped (::ffff:a.b.c.d), 6to4 (2002::/16), Teredo
    (2001::/32, the client), NAT64 (64:ff9b::/96, 64:ff9b:1::/48)."""
    if addr.ipv4_mapped:
        return addr.ipv4_mapped
    if addr.sixtofour:
        return addr.sixtofour
    if addr.teredo:
        return addr.teredo[1]
    if any(addr in net for net in _NAT64):
        return ipaddress.IPv4Address(int(addr) & 0xFFFFFFFF)
    return None


def _public(addr: Address) -> bool:
    return addr.is_global and not (addr.is_private or addr.is_loopback or addr.is_link_local or addr.is_multicast
                                   or addr.is_reserved or addr.is_unspecified)


def _refusal(addr: Address) -> str | None:
    if isinstance(addr, ipaddress.IPv6Address):
        inner = _embedded_ipv4(addr)
        if inner is not None and not _public(inner):
            return f"{addr} embeds the non-public IPv4 address {inner}"
        if addr.teredo or any(addr in net for net in _NAT64[1:]):
            return f"{addr} is a tunnel or local translation address"
    if not _public(addr):
        return f"{addr} is not a public address"
    return None


def _allowed(host: str, addresses: list[Address], allow: list[str]) -> bool:
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


async def check_target(url: str, allow: list[str], resolver: Resolver | None = None) -> Target:
    """The target's checked addresses; UnsafeTarget unless `url` may receive webhooks."""
    parts = urlsplit(url)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise UnsafeTarget("webhook URLs must be http(s) with a host")
    if parts.username or parts.password:
        raise UnsafeTarget("webhook URLs must not carry credentials")
    host = parts.hostname
    try:
        port = parts.port or (443 if parts.scheme == "https" else 80)
    except ValueError:
        raise UnsafeTarget("webhook URL has an invalid port") from None
    try:
        addresses: list[Address] = [ipaddress.ip_address(host)]
    except ValueError:
        try:
            addresses = await (resolver or system_resolver)(host, port)
        except (OSError, UnicodeError) as exc:
            raise UnsafeTarget(f"webhook host {host!r} does not resolve") from exc
        if not addresses:
            raise UnsafeTarget(f"webhook host {host!r} does not resolve")
    if not _allowed(host, addresses, allow):
        for addr in addresses:
            why = _refusal(addr)
            if why:
                raise UnsafeTarget(f"webhook target {host!r} resolves to a non-public address ({why})")
    return Target(host, port, addresses)


class PinnedTransport(httpx.AsyncBaseTransport):
    """Connects only to addresses that passed the SSRF check (no second DNS lookup between the
    check and the connection, so no DNS rebinding): each request's host is resolved once
    through `resolver`, checked, and the request goes to a checked address. The Host header and
    the TLS server name (and so the certificate check) stay the URL's host name."""

    def __init__(self, allow: list[str], resolver: Resolver | None = None) -> None:
        self.allow = allow
        self.resolver = resolver
        self._inner = httpx.AsyncHTTPTransport()

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        target = await check_target(str(request.url), self.allow, self.resolver)
        last: Exception | None = None
        for addr in target.addresses:
            pinned = request.url.copy_with(host=str(addr))
            extensions = {**request.extensions}
            if request.url.scheme == "https":
                extensions["sni_hostname"] = target.host
            attempt = httpx.Request(request.method, pinned, headers=request.headers, stream=request.stream,
                                    extensions=extensions)
            try:
                return await self._inner.handle_async_request(attempt)
            except httpx.ConnectError as exc:  # the next checked address, if any
                last = exc
        assert last is not None
        raise last

    async def aclose(self) -> None:
        await self._inner.aclose()


def event_body(obj: dict[str, Any], summary: dict[str, Any]) -> bytes:
    meta = obj["metadata"]
    event = {"id": f"evt_{meta['uid']}", "type": f"job.{summary['phase'].lower()}", "created": int(time.time()),
             "data": summary}
    return json.dumps(event, separators=(",", ":"), sort_keys=True).encode()


DUE_KEY = "webhook:due"
RECORD_TTL = 7 * 86400
FAILURES_KEPT = 100
FAILURES_TTL = 30 * 86400


def sent_key(uid: str) -> str:
    return f"webhook:sent:{uid}"


def delivery_key(uid: str) -> str:
    return f"webhook:delivery:{uid}"


def failures_key(tenant: str) -> str:
    return f"webhook:failures:{tenant}"


# KEYS sent, delivery, due; ARGV ttl, tenant, url, body, now, uid
_ENQUEUE = """
if not redis.call('SET', KEYS[1], 'pending', 'NX', 'EX', ARGV[1]) then return 0 end
redis.call('HSET', KEYS[2], 'tenant', ARGV[2], 'url', ARGV[3], 'body', ARGV[4], 'attempts', 0,
           'next_at', ARGV[5], 'created', ARGV[5], 'lease', '', 'last_error', '')
redis.call('EXPIRE', KEYS[2], ARGV[1])
redis.call('ZADD', KEYS[3], ARGV[5], ARGV[6])
return 1
"""

# KEYS due; ARGV now, lease_until, limit, token, delivery key prefix.
# Returns {uid, attempts, uid, attempts, ...}; uids whose hash is gone are dropped.
_CLAIM = """
local ids = redis.call('ZRANGEBYSCORE', KEYS[1], '-inf', ARGV[1], 'LIMIT', 0, tonumber(ARGV[3]))
local out = {}
for _, id in ipairs(ids) do
  local key = ARGV[5] .. id
  if redis.call('EXISTS', key) == 1 then
    redis.call('ZADD', KEYS[1], ARGV[2], id)
    redis.call('HSET', key, 'lease', ARGV[4])
    out[#out + 1] = id
    out[#out + 1] = redis.call('HINCRBY', key, 'attempts', 1)
  else
    redis.call('ZREM', KEYS[1], id)
  end
end
return out
"""

# KEYS due, delivery, sent; ARGV uid, token, 'retry'|'done', next_at|final record, ttl, last_error
_SETTLE = """
if redis.call('HGET', KEYS[2], 'lease') ~= ARGV[2] then return 0 end
if ARGV[3] == 'retry' then
  redis.call('HSET', KEYS[2], 'lease', '', 'next_at', ARGV[4], 'last_error', ARGV[6])
  redis.call('ZADD', KEYS[1], ARGV[4], ARGV[1])
else
  redis.call('ZREM', KEYS[1], ARGV[1])
  redis.call('DEL', KEYS[2])
  redis.call('SET', KEYS[3], ARGV[4], 'EX', ARGV[5])
end
return 1
"""


class WebhookSender:
    """Enqueues completion events in Redis and delivers due ones from a background worker."""

    def __init__(self, redis: Redis, secret: bytes, allow: list[str], *, attempts: int, backoff: float,
                 timeout: float, metrics: Any, poll: float = 1.0, lease: float = 30.0,
                 concurrency: int = 16, resolver: Resolver | None = None) -> None:
        self.redis = redis
        self.secret = secret
        self.allow = allow
        self.attempts = attempts
        self.backoff = backoff
        self.timeout = timeout
        self.metrics = metrics
        self.poll = poll
        # The lease must outlive an attempt (bounded by `timeout`), or a second claimer could POST too.
        self.lease = max(lease, timeout + 1.0)
        self.concurrency = concurrency
        self.tasks: set[asyncio.Task[None]] = set()
        # Redirects are not followed (a 3xx is a failed attempt): a redirect could point anywhere.
        self.http = httpx.AsyncClient(transport=PinnedTransport(allow, resolver), timeout=timeout,
                                      follow_redirects=False)
        self._enqueue = redis.register_script(_ENQUEUE)
        self._claim = redis.register_script(_CLAIM)
        self._settle = redis.register_script(_SETTLE)
        self._wake = asyncio.Event()
        self._worker: asyncio.Task[None] | None = None

    # --- enqueue --------------------------------------------------------------------------
    async def enqueue(self, tenant: str, uid: str, url: str, body: bytes) -> bool:
        """Record the delivery in Redis (once per resource uid, across replicas and restarts);
        the worker of whichever replica claims it first delivers it."""
        now = time.time()
        added = await self._enqueue(keys=[sent_key(uid), delivery_key(uid), DUE_KEY],
                                    args=[RECORD_TTL, tenant, url, body.decode(), repr(now), uid])
        if added:
            self._wake.set()
        return bool(added)

    # --- worker ---------------------------------------------------------------------------
    def start(self) -> None:
        if self._worker is None:
            self._worker = asyncio.create_task(self._run(), name="webhook-worker")

    async def _run(self) -> None:
        while True:
            delay = self.poll
            try:
                await self.run_once()
                first = await self.redis.zrange(DUE_KEY, 0, 0, withscores=True)
                if first and len(self.tasks) < self.concurrency:
                    delay = min(self.poll, max(0.0, first[0][1] - time.time()))
            except asyncio.CancelledError:
                raise
            except Exception as exc:  # Redis down: keep trying, quietly
                log.warning("webhook worker: %s", type(exc).__name__)
            if delay > 0:
                await within(self._wake.wait(), delay)
            self._wake.clear()

    async def run_once(self) -> int:
        """Claim what is due (up to the free delivery slots) and start delivering it."""
        slots = self.concurrency - len(self.tasks)
        if slots <= 0:
            return 0
        now = time.time()
        token = secrets.token_hex(8)
        claimed = await self._claim(keys=[DUE_KEY], args=[repr(now), repr(now + self.lease), slots, token,
                                                          delivery_key("")])
        pairs = list(zip(claimed[0::2], claimed[1::2]))
        for uid, attempt in pairs:
            task = asyncio.create_task(self._deliver(uid, int(attempt), token))
            self.tasks.add(task)
            task.add_done_callback(self._done)
        return len(pairs)

    def _done(self, task: asyncio.Task[None]) -> None:
        self.tasks.discard(task)
        self._wake.set()
        if not task.cancelled() and task.exception() is not None:
            log.error("webhook delivery crashed: %r", task.exception())

    async def _attempt(self, tenant: str, url: str, body: bytes) -> str | None:
        """One POST; None when delivered, else why not. Raises UnsafeTarget (the transport
        checks the target and connects only to the addresses it checked)."""
        secret = security.tenant_webhook_secret(self.secret, tenant)
        headers = {"Content-Type": "application/json", "User-Agent": "SpatialForge-Webhooks/1",
                   SIGNATURE_HEADER: security.sign_payload(secret, body)}
        response = await self.http.post(url, content=body, headers=headers)
        if 200 <= response.status_code < 300:
            return None
        return f"HTTP {response.status_code}"

    async def _deliver(self, uid: str, attempt: int, token: str) -> None:
        record = await self.redis.hgetall(delivery_key(uid))
        tenant, url, body = record.get("tenant", ""), record.get("url", ""), record.get("body", "").encode()
        keys = [DUE_KEY, delivery_key(uid), sent_key(uid)]
        reason: str | None
        if attempt > self.attempts:  # earlier claimers died after the last attempt
            reason = record.get("last_error") or "claimer lost"
        else:
            try:
                async with asyncio.timeout(self.timeout):
                    reason = await self._attempt(tenant, url, body)
            except UnsafeTarget as exc:
                log.warning("webhook for %s refused: %s", uid, exc)
                if await self._settle(keys=keys, args=[uid, token, "done", "refused", RECORD_TTL, ""]):
                    self.metrics.webhooks.labels("refused").inc()
                    await self._record_failure(tenant, uid, url, attempt, f"refused: {exc}")
                return
            except (httpx.HTTPError, TimeoutError) as exc:
                reason = type(exc).__name__
            except Exception as exc:  # any other transport failure is a failed attempt too, retried
                log.warning("webhook for %s attempt %d raised %r", uid, attempt, exc)
                reason = type(exc).__name__
            if reason is None:
                if await self._settle(keys=keys, args=[uid, token, "done", f"delivered:{attempt}", RECORD_TTL, ""]):
                    self.metrics.webhooks.labels("delivered").inc()
                else:
                    log.warning("webhook for %s delivered after its lease ran out", uid)
                return
            log.info("webhook for %s attempt %d failed (%s)", uid, attempt, reason)
        if attempt < self.attempts:
            due = time.time() + self.backoff * 2 ** (attempt - 1)
            if await self._settle(keys=keys, args=[uid, token, "retry", repr(due), RECORD_TTL, reason]):
                self.metrics.webhooks.labels("retry").inc()
            return
        if await self._settle(keys=keys, args=[uid, token, "done", "failed", RECORD_TTL, reason]):
            self.metrics.webhooks.labels("failed").inc()
            log.warning("webhook for %s (tenant %s) given up after %d attempts (%s)",
                        uid, tenant, min(attempt, self.attempts), reason)
            await self._record_failure(tenant, uid, url, min(attempt, self.attempts), reason)

    async def failures(self, tenant: str, limit: int) -> list[dict[str, Any]]:
        """The tenant's given-up deliveries, newest first."""
        return [json.loads(r) for r in await self.redis.lrange(failures_key(tenant), 0, limit - 1)]

    async def _record_failure(self, tenant: str, uid: str, url: str, attempts: int, reason: str) -> None:
        entry = json.dumps({"event_id": f"evt_{uid}", "url": url, "attempts": attempts, "last_error": reason,
                            "at": int(time.time())}, sort_keys=True)
        async with self.redis.pipeline(transaction=True) as p:
            p.lpush(failures_key(tenant), entry)
            p.ltrim(failures_key(tenant), 0, FAILURES_KEPT - 1)
            p.expire(failures_key(tenant), FAILURES_TTL)
            await p.execute()

    async def close(self) -> None:
        """Stop claiming; let attempts in flight finish (each is bounded by `timeout`), then
        cancel what is left (its lease runs out and another claimer retries it)."""
        if self._worker is not None:
            await cancel_and_wait([self._worker])
            self._worker = None
        if self.tasks:
            await asyncio.wait(list(self.tasks), timeout=self.timeout + 1.0)
        await cancel_and_wait(list(self.tasks))
        # A pooled connection of a cancelled attempt can hold the pool's close; never wait on it.
        if not await within(self.http.aclose(), self.timeout + 1.0):
            log.warning("webhook HTTP client did not close within %.1fs; left to the collector", self.timeout + 1.0)
