"""Every authenticated request passes here once: key lookup, the tenant's effective plan and
the per-minute rate charge, in one Lua script (one Redis round trip instead of three).

Redis runs the script atomically, so the rate check is exact under concurrency, and a refused
request is charged nothing. The script reads `tenant:{t}` and `rl:tenant:{t}:{window}`, whose
names it learns from the key's record: that needs one Redis server (or a proxy that pins
these keys together), not Redis Cluster. During an HMAC-secret rotation a key found only under
the previous secret is re-hashed under the current one in the same script, so keys used during
the grace period keep working after the previous secret is removed.
"""

from __future__ import annotations

import time
from dataclasses import dataclass

from redis.asyncio import Redis

from spatialforge.apiserver.core import security
from spatialforge.apiserver.core.metrics import Metrics
from spatialforge.apiserver.errors import RateLimited, Unauthorized
from spatialforge.apiserver.services import plans
from spatialforge.apiserver.services.quotas import WINDOW, Decision, rate_decision
from spatialforge.apiserver.services.tenants import Principal

# KEYS[1] apikey:{hash under the current secret}, KEYS[2] apikey:{hash under the previous
# secret} (or the same key when there is none), KEYS[3] the caller address's failed-auth window.
# ARGV now (unix s), window (s), current hash, failed-auth limit, then plan name / default rate pairs.
# Returns {status, hash, tenant, role, key_id, used, limit}
# with status 0 unknown or revoked (counted against the address), 1 admitted, 2 over the rate
# (nothing charged), 3 unknown or revoked from an address over its failed-auth limit. The key
# is looked up first: a key that verifies is never refused for its address's failures.
_ADMIT = """
local fields = {'hash', 'tenant', 'role', 'key_id', 'revoked'}
local rec = redis.call('HMGET', KEYS[1], unpack(fields))
if not rec[1] and KEYS[2] ~= KEYS[1] then
  local old = redis.call('HMGET', KEYS[2], unpack(fields))
  if old[1] and (not old[5] or old[5] == '') then
    redis.call('HSET', KEYS[1], unpack(redis.call('HGETALL', KEYS[2])))
    redis.call('HSET', KEYS[1], 'hash', ARGV[3])
    redis.call('SET', 'keyid:' .. old[4], ARGV[3])
    redis.call('DEL', KEYS[2])
    rec = redis.call('HMGET', KEYS[1], unpack(fields))
  end
end
if not rec[1] or (rec[5] and rec[5] ~= '') then
  local failed = tonumber(redis.call('GET', KEYS[3]) or '0')
  if failed >= tonumber(ARGV[4]) then return {3, '', '', '', '', failed, tonumber(ARGV[4])} end
  if redis.call('INCR', KEYS[3]) == 1 then redis.call('EXPIRE', KEYS[3], tonumber(ARGV[2]) + 5) end
  return {0}
end
local tenant, role = rec[2], rec[3]
local out = {1, rec[1], tenant, role, rec[4], 0, 0}
if role == 'admin' then return out end
local t = redis.call('HMGET', 'tenant:' .. tenant, 'plan', 'rate', 'grace_until')
local now, window = tonumber(ARGV[1]), tonumber(ARGV[2])
local name = t[1] or 'free'
if t[3] and t[3] ~= '' and tonumber(t[3]) < now then name = 'free' end
local rate = t[2] and tonumber(t[2])
if not rate then
  local fallback
  for i = 5, #ARGV, 2 do
    if ARGV[i] == name then rate = tonumber(ARGV[i + 1]) end
    if ARGV[i] == 'free' then fallback = tonumber(ARGV[i + 1]) end
  end
  rate = rate or fallback
end
local rk = 'rl:tenant:' .. tenant .. ':' .. math.floor(now / window)
local used = tonumber(redis.call('GET', rk) or '0')
out[7] = rate
if used >= rate then out[1] = 2; out[6] = used; return out end
used = redis.call('INCR', rk)
if used == 1 then redis.call('EXPIRE', rk, window + 5) end
out[6] = used
return out
"""
# The plan's own rate, used when the tenant has no override; a plan missing here rates as free.
_RATES = [x for name, plan in plans.PLANS.items() for x in (name, plan.rate_per_minute)]


@dataclass
class Admission:
    principal: Principal | None
    """None: the key is unknown, revoked or malformed (or the address is locked out)."""
    decision: Decision | None = None
    """The rate decision (None for admin keys, which have no rate limit)."""
    locked_for: int = 0
    """The key failed and the caller's address has spent its failed-auth limit: seconds until
    the window ends (a key that verifies is admitted meanwhile)."""


def presented_key(headers: dict[str, str]) -> str | None:
    """The key sent as `X-API-Key` or `Authorization: Bearer` (lower-case header names)."""
    key = headers.get("x-api-key")
    if key:
        return key.strip()
    scheme, _, value = headers.get("authorization", "").partition(" ")
    if scheme.lower() == "bearer" and value.strip():
        return value.strip()
    return None


class Gate:
    """Authenticates a request and charges its tenant's per-minute rate (one Redis round trip).

    Every key that fails (unknown, revoked or malformed) counts against the caller's address;
    past `failed_auth_limit` in a minute further failing keys from it get 429 instead of 401
    until the window ends. A key that verifies is admitted whatever its address's failures:
    behind a NAT one stale client must not lock out everyone else, the admin included. The
    limit bounds the work junk costs; with 238-bit keys guessing is not the threat.
    """

    def __init__(self, redis: Redis, secret: bytes, previous_secret: bytes | None = None, *,
                 failed_auth_limit: int = 30, metrics: Metrics | None = None) -> None:
        self.secret = secret
        self.previous_secret = previous_secret
        self.failed_auth_limit = failed_auth_limit
        self.metrics = metrics
        self._script = redis.register_script(_ADMIT)

    async def admit(self, key: str, address: str = "unknown") -> Admission:
        # A malformed key is hashed and looked up like any other: it must count as a failure.
        digest = security.hash_key(self.secret, key)
        previous = security.hash_key(self.previous_secret, key) if self.previous_secret else digest
        epoch = int(time.time())
        reset = WINDOW - epoch % WINDOW
        failed_key = f"rl:authfail:{address}:{epoch // WINDOW}"
        got = await self._script(keys=[f"apikey:{digest}", f"apikey:{previous}", failed_key],
                                 args=[epoch, WINDOW, digest, self.failed_auth_limit, *_RATES])
        status = int(got[0])
        if status == 3:
            return Admission(None, locked_for=reset)
        if status == 0 or not security.same(str(got[1]), digest) or not security.well_formed(key):
            return Admission(None)
        _, _, tenant, role, kid = got[:5]
        principal = Principal(tenant=tenant, role=role or "user", key_id=kid)
        if role == "admin":
            return Admission(principal)
        return Admission(principal, rate_decision(status == 1, int(got[6]), int(got[5]), reset))

    async def authenticate(self, headers: dict[str, str], address: str) -> tuple[Principal, dict[str, str]]:
        """The caller's principal and the rate headers for the response; raises Unauthorized
        (401) or RateLimited (429, with Retry-After)."""
        key = presented_key(headers)
        if not key:
            raise Unauthorized("send an API key as X-API-Key or Authorization: Bearer",
                               headers={"WWW-Authenticate": "Bearer"})
        admission = await self.admit(key[:256], address)
        if admission.locked_for:
            self._refused("failed_auth")
            raise RateLimited(f"more than {self.failed_auth_limit} failed authentications from this address "
                              "in a minute", code="too_many_failed_auth",
                              headers={"Retry-After": str(admission.locked_for)})
        if admission.principal is None:
            raise Unauthorized("the API key is invalid or revoked", code="invalid_key",
                               headers={"WWW-Authenticate": "Bearer"})
        decision = admission.decision
        if decision is None:
            return admission.principal, {}
        if not decision.allowed:
            self._refused("rate")
            raise RateLimited(f"more than {decision.limit} requests per minute",
                              headers={**decision.headers, "Retry-After": str(decision.reset)})
        return admission.principal, decision.headers

    def _refused(self, reason: str) -> None:
        if self.metrics is not None:
            self.metrics.refusals.labels(reason).inc()
