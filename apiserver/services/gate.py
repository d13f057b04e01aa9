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
from spatialforge.apiserver.services import plans
from spatialforge.apiserver.services.quotas import WINDOW, Decision, rate_decision
from spatialforge.apiserver.services.tenants import Principal

# KEYS[1] apikey:{hash under the current secret}, KEYS[2] apikey:{hash under the previous
# secret} (or the same key when there is none).
# ARGV now (unix s), window (s), current hash, then plan name / default rate pairs.
# Returns {status, hash, tenant, role, key_id, used, limit}
# with status 0 unknown or revoked, 1 admitted, 2 over the rate (nothing charged).
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
if not rec[1] or (rec[5] and rec[5] ~= '') then return {0} end
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
  for i = 4, #ARGV, 2 do
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
    """None: the key is unknown, revoked or malformed."""
    decision: Decision | None = None
    """The rate decision (None for admin keys, which have no rate limit)."""


class Gate:
    def __init__(self, redis: Redis, secret: bytes, previous_secret: bytes | None = None) -> None:
        self.secret = secret
        self.previous_secret = previous_secret
        self._script = redis.register_script(_ADMIT)

    async def admit(self, key: str) -> Admission:
        if not security.well_formed(key):
            return Admission(None)
        digest = security.hash_key(self.secret, key)
        previous = security.hash_key(self.previous_secret, key) if self.previous_secret else digest
        epoch = int(time.time())
        got = await self._script(keys=[f"apikey:{digest}", f"apikey:{previous}"],
                                 args=[epoch, WINDOW, digest, *_RATES])
        if int(got[0]) == 0 or not security.same(str(got[1]), digest):
            return Admission(None)
        status, _, tenant, role, kid = got[:5]
        principal = Principal(tenant=tenant, role=role or "user", key_id=kid)
        if role == "admin":
            return Admission(principal)
        return Admission(principal, rate_decision(int(status) == 1, int(got[6]), int(got[5]), WINDOW - epoch % WINDOW))
