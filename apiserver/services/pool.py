"""Client-side balancing over DepthPools' EndpointSlices (synchronous depth and measure).

A pool (`SPATIALFORGE_API_DEPTH_POOLS`, "<namespace>/<name>" each) is reached through the
EndpointSlices of its Service `spatialforge-pool-<name>` (label
`kubernetes.io/service-name`): every ready, not terminating address with the slice's port
named `http`. This needs no kube-proxy, so it works on the local plane (pods are processes
with their own loopback address) as in a real cluster. The slices and the DepthPool object
(its model and `maxInFlightPerTenant`) are listed again when older than `ttl` seconds.

The Service name, the "ready endpoint" rule and the port name are the operator's
(spatialforge.crds.pool). The tenant's in-flight limit (`maxInFlightPerTenant`) holds across
front-end replicas: each request takes a slot in a Redis sorted set per pool and tenant
(member: the request's id, score: when the slot lapses, so a crashed replica's slots expire
after the request timeout), taken and checked in one Lua script.

A request goes to the endpoint with the fewest requests in flight from this process (ties
in turn). Past the tenant's in-flight limit, with no ready endpoint, when the chosen server
answers 503 (its queue is full) or cannot be reached, the caller gets `Unavailable` (503 with
Retry-After) and charges nothing. A connection refused is retried once on another endpoint
(the server never saw the request).
"""

from __future__ import annotations

import asyncio
import itertools
import logging
import time
import uuid
from collections import Counter
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from typing import Any

import httpx
from kubernetes_asyncio import client
from kubernetes_asyncio.client.exceptions import ApiException
from redis.asyncio import Redis

from spatialforge.apiserver import errors
from spatialforge.apiserver.core.metrics import Metrics
from spatialforge.crds.constants import GROUP, VERSION
from spatialforge.crds.kinds import DEPTH_POOL
from spatialforge.crds.pool import SERVICE_LABEL, ready_urls, service_name
from spatialforge.crds.v1alpha1 import depthpool

log = logging.getLogger("spatialforge.apiserver.pool")
RETRY_AFTER = "1"
SLOT_MARGIN = 10.0  # seconds a slot outlives the request timeout (a crashed replica's slots lapse)

# KEYS[1] the pool's and tenant's slots (sorted set); ARGV limit, member, now, lapses at (seconds)
_TAKE_SLOT = """
redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', ARGV[3])
if redis.call('ZCARD', KEYS[1]) >= tonumber(ARGV[1]) then return 0 end
redis.call('ZADD', KEYS[1], ARGV[4], ARGV[2])
redis.call('EXPIREAT', KEYS[1], math.ceil(tonumber(ARGV[4])))
return 1
"""


def slots_key(ref: PoolRef, tenant: str) -> str:
    return f"pool-inflight:{ref}:{tenant}"


@dataclass(frozen=True)
class PoolRef:
    namespace: str
    name: str

    @classmethod
    def parse(cls, value: str) -> PoolRef:
        ns, sep, name = value.strip().partition("/")
        if not sep or not ns or not name:
            raise ValueError(f"a depth pool is '<namespace>/<name>', got {value!r}")
        return cls(ns, name)

    def __str__(self) -> str:
        return f"{self.namespace}/{self.name}"


@dataclass
class PoolView:
    """What the front end knows of a pool: its model, tenant limit and ready endpoints."""

    ref: PoolRef
    size: str
    variant: str
    max_in_flight_per_tenant: int
    endpoints: list[str]
    fetched: float = field(default_factory=time.monotonic)


def ready_endpoints(slices: list[Any]) -> list[str]:
    """Base URLs of the ready endpoints of EndpointSlices (the operator's rule, crds/pool.py)."""
    return ready_urls(slices)


class DepthPools:
    """The configured pools; `call` sends one request to one of a pool's servers."""

    def __init__(self, api: client.ApiClient, refs: list[PoolRef], *, redis: Redis, ttl: float = 2.0,
                 timeout: float = 30.0, connect_timeout: float = 2.0, metrics: Metrics | None = None) -> None:
        self.refs = refs
        self.redis = redis
        self._take_slot = redis.register_script(_TAKE_SLOT)
        self.slot_seconds = timeout + connect_timeout + SLOT_MARGIN
        self.metrics = metrics
        self.ttl = ttl
        self.discovery = client.DiscoveryV1Api(api)
        self.custom = client.CustomObjectsApi(api)
        self.http = httpx.AsyncClient(timeout=httpx.Timeout(timeout, connect=connect_timeout),
                                      limits=httpx.Limits(max_connections=256, max_keepalive_connections=64))
        self._views: dict[PoolRef, PoolView] = {}
        self._locks: dict[PoolRef, asyncio.Lock] = {r: asyncio.Lock() for r in refs}
        self._in_flight: Counter[str] = Counter()  # per endpoint URL, this process
        self._turn = itertools.count()

    async def close(self) -> None:
        await self.http.aclose()

    async def view(self, ref: PoolRef) -> PoolView:
        """The pool as listed at most `ttl` seconds ago."""
        current = self._views.get(ref)
        if current is not None and time.monotonic() - current.fetched < self.ttl:
            return current
        async with self._locks[ref]:
            current = self._views.get(ref)
            if current is not None and time.monotonic() - current.fetched < self.ttl:
                return current
            try:
                obj = await self.custom.get_namespaced_custom_object(GROUP, VERSION, ref.namespace,
                                                                     DEPTH_POOL.plural, ref.name)
            except ApiException as exc:
                if exc.status == 404:
                    raise errors.Unavailable(f"depth pool {ref} does not exist; synchronous depth is not available",
                                             code="pool_unavailable", headers={"Retry-After": "30"}) from None
                raise
            spec = depthpool.DepthPoolSpec.model_validate(obj.get("spec") or {})
            slices = await self.discovery.list_namespaced_endpoint_slice(
                ref.namespace, label_selector=f"{SERVICE_LABEL}={service_name(ref.name)}")
            view = PoolView(ref=ref, size=spec.model.size.value, variant=spec.model.variant.value,
                            max_in_flight_per_tenant=spec.max_in_flight_per_tenant,
                            endpoints=ready_endpoints(slices.items))
            self._views[ref] = view
            return view

    async def for_model(self, size: str | None) -> PoolView:
        """The first configured pool serving `size` (any size: the first pool)."""
        if not self.refs:
            raise errors.Unavailable("no depth pool is configured (SPATIALFORGE_API_DEPTH_POOLS); synchronous depth "
                                     "is not available here", code="pool_unavailable", headers={"Retry-After": "60"})
        views = [await self.view(ref) for ref in self.refs]
        if size is None:
            return views[0]
        for v in views:
            if v.size == size:
                return v
        served = sorted({v.size for v in views})
        raise errors.InvalidRequest(f"model: no depth pool serves size {size!r} here (served: {', '.join(served)})",
                                    code="model_not_served", details={"fields": [{"field": "model", "message":
                                                                                  f"one of {', '.join(served)}"}]})

    @asynccontextmanager
    async def slot(self, view: PoolView, tenant: str) -> AsyncIterator[None]:
        """One of the tenant's in-flight requests to the pool (counted over every front-end
        replica, in Redis), or 503 past its limit."""
        key, member, now = slots_key(view.ref, tenant), uuid.uuid4().hex, time.time()
        if not await self._take_slot(keys=[key], args=[view.max_in_flight_per_tenant, member, now,
                                                       now + self.slot_seconds]):
            raise errors.Unavailable(
                f"you have {view.max_in_flight_per_tenant} requests in flight on the depth pool (its per-tenant "
                "limit); retry when one has finished", code="pool_tenant_limit", headers={"Retry-After": RETRY_AFTER},
                details={"limit": view.max_in_flight_per_tenant})
        try:
            yield
        finally:
            await asyncio.shield(self.redis.zrem(key, member))  # released even when the request is cancelled

    def _order(self, endpoints: list[str]) -> list[str]:
        """Fewest in flight first; among equals, the next in turn."""
        start = next(self._turn) % len(endpoints)
        rotated = endpoints[start:] + endpoints[:start]
        return sorted(rotated, key=lambda u: self._in_flight[u])

    async def call(self, view: PoolView, tenant: str, path: str, *, params: dict[str, str], content: bytes,
                   accept: str) -> httpx.Response:
        """POST `content` to `path` on one of the pool's servers. A 503 from the server, no
        ready endpoint, or no server reachable raise `Unavailable` (the caller charges nothing)."""
        async with self.slot(view, tenant):
            if not view.endpoints:
                raise errors.Unavailable(f"depth pool {view.ref} has no ready server; retry shortly",
                                         code="pool_unavailable", headers={"Retry-After": RETRY_AFTER})
            tried = 0
            for url in self._order(view.endpoints)[:2]:
                tried += 1
                self._in_flight[url] += 1
                try:
                    r = await self.http.post(url + path, params=params, content=content,
                                             headers={"Accept": accept, "Content-Type": "application/octet-stream"})
                except httpx.ConnectError:
                    log.warning("depth pool %s: %s refused the connection", view.ref, url)
                    if self.metrics is not None:
                        self.metrics.pool_refused.labels(str(view.ref)).inc()
                    self._views.pop(view.ref, None)  # list the slices again on the next request
                    continue
                except httpx.TimeoutException:
                    raise errors.Unavailable(f"depth pool {view.ref} did not answer in time; retry later",
                                             code="pool_timeout", headers={"Retry-After": RETRY_AFTER}) from None
                except httpx.HTTPError as exc:
                    log.warning("depth pool %s: %s failed: %s", view.ref, url, type(exc).__name__)
                    raise errors.Unavailable(f"depth pool {view.ref} failed to answer; retry later",
                                             code="pool_unavailable", headers={"Retry-After": RETRY_AFTER}) from None
                finally:
                    self._in_flight[url] -= 1
                    if self._in_flight[url] <= 0:
                        del self._in_flight[url]
                if r.status_code == 503:
                    retry = r.headers.get("Retry-After") or RETRY_AFTER
                    raise errors.Unavailable(f"depth pool {view.ref} is saturated; retry after {retry} s",
                                             code="pool_saturated", headers={"Retry-After": retry})
                return r
            raise errors.Unavailable(f"depth pool {view.ref}: no server reachable ({tried} tried); retry shortly",
                                     code="pool_unavailable", headers={"Retry-After": RETRY_AFTER})
