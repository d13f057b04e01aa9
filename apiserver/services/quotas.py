"""Per-minute rate limits, monthly unit quotas and concurrent-job slots, checked and charged
in one Lua script.

Redis runs a script atomically, so 50 parallel requests at a quota edge admit exactly the
remainder: nothing reads a counter and writes it back from Python. A refused request is
charged nothing.

Headers: the per-minute limit answers `X-RateLimit-*`; the month's units answer `X-Quota-*`
(limit, remaining, seconds to the month's end), so neither overwrites the other.
"""

from __future__ import annotations

import datetime as dt
import time
from dataclasses import dataclass

from redis.asyncio import Redis

# KEYS[1] rate window counter, KEYS[2] month usage hash (may be absent for cost 0),
# KEYS[3] the tenant's active-job sorted set (member: job name, score: when its slot was taken)
# ARGV rate_limit (0: no rate check), window_ttl, cost, unit_limit, slot_limit (0: no slot),
#      slot member, now (seconds)
_CHECK_AND_CHARGE = """
local rl = tonumber(ARGV[1])
local r = 0
if rl > 0 then
  r = tonumber(redis.call('GET', KEYS[1]) or '0')
  if r >= rl then return {0, r, -1} end
end
local sl = tonumber(ARGV[5])
if sl > 0 then
  local active = redis.call('ZCARD', KEYS[3])
  if active >= sl then return {-2, r, active} end
end
local cost = tonumber(ARGV[3])
local u = -1
if cost > 0 then
  u = tonumber(redis.call('HGET', KEYS[2], 'units') or '0')
  if u + cost > tonumber(ARGV[4]) then return {-1, r, u} end
  u = redis.call('HINCRBY', KEYS[2], 'units', cost)
  redis.call('EXPIRE', KEYS[2], 3456000)
end
if sl > 0 then
  redis.call('ZADD', KEYS[3], ARGV[7], ARGV[6])
end
if rl > 0 then
  r = redis.call('INCR', KEYS[1])
  if r == 1 then redis.call('EXPIRE', KEYS[1], ARGV[2]) end
end
return {1, r, u}
"""

WINDOW = 60
USAGE_TTL = 3456000  # 40 days: a month's usage outlives the month


@dataclass
class Decision:
    allowed: bool
    reason: str  # "ok" | "rate" | "quota" | "concurrency"
    limit: int
    remaining: int
    reset: int  # seconds until the limit resets (0: when a running job ends)
    headers: dict[str, str]


def month(now: dt.datetime | None = None) -> str:
    return (now or dt.datetime.now(dt.UTC)).strftime("%Y-%m")


def usage_key(tenant: str, when: str | None = None) -> str:
    return f"usage:{tenant}:{when or month()}"


def active_key(tenant: str) -> str:
    """The tenant's jobs holding a concurrency slot (a sorted set scored by when it was taken)."""
    return f"active:{tenant}"


def _seconds_to_month_end(now: dt.datetime) -> int:
    first_next = (now.replace(day=28) + dt.timedelta(days=4)).replace(day=1, hour=0, minute=0, second=0, microsecond=0)
    return max(1, int((first_next - now).total_seconds()))


class Quotas:
    def __init__(self, redis: Redis) -> None:
        self.redis = redis
        self._script = redis.register_script(_CHECK_AND_CHARGE)

    async def check(self, subject: str, *, rate_limit: int, cost: int = 0, unit_limit: int = 0,
                    tenant: str | None = None, slot: str | None = None, slot_limit: int = 0) -> Decision:
        """Admit one request of `subject` (rate) costing `cost` units of `tenant`'s month and,
        with `slot`, taking one of the tenant's `slot_limit` concurrent-job slots."""
        now = dt.datetime.now(dt.UTC)
        epoch = int(now.timestamp())
        window = epoch // WINDOW
        rate_key = f"rl:{subject}:{window}"
        reset = WINDOW - epoch % WINDOW
        keys = [rate_key, usage_key(tenant or subject, month(now)), active_key(tenant or subject)]
        ok, used, units = await self._script(
            keys=keys, args=[rate_limit, WINDOW + 5, cost, unit_limit, slot_limit if slot else 0, slot or "",
                             f"{now.timestamp():.3f}"])
        if ok == 0:
            return rate_decision(False, rate_limit, used, reset)
        if ok == -2:
            return Decision(False, "concurrency", slot_limit, 0, 0, {"X-Concurrent-Jobs-Limit": str(slot_limit)})
        if ok == -1:
            to_month_end = _seconds_to_month_end(now)
            headers = quota_headers(unit_limit, max(0, unit_limit - units), to_month_end)
            return Decision(False, "quota", unit_limit, max(0, unit_limit - units), to_month_end, headers)
        if cost > 0:
            headers = quota_headers(unit_limit, max(0, unit_limit - units), _seconds_to_month_end(now))
            return Decision(True, "ok", unit_limit, unit_limit - units, _seconds_to_month_end(now), headers)
        return rate_decision(True, rate_limit, used, reset)

    async def refund(self, tenant: str, cost: int, when: str | None = None, *, recorded: bool = False) -> None:
        """Give units back to the month `when` (default: this one). `recorded` also counts them
        as refunded in the usage (a job that never ran); a request that created nothing is not."""
        if not cost:
            return
        key = usage_key(tenant, when)
        async with self.redis.pipeline(transaction=True) as p:
            p.hincrby(key, "units", -cost)
            if recorded:
                p.hincrby(key, "units_refunded", cost)
            p.expire(key, USAGE_TTL)
            await p.execute()

    async def release_slot(self, tenant: str, name: str) -> None:
        await self.redis.zrem(active_key(tenant), name)

    async def prune_slots(self, tenant: str, live: set[str], *, older_than: float = 60.0) -> int:
        """Drop slots of jobs that are no longer live (deleted behind the front end's back);
        slots taken in the last `older_than` seconds stay (their create may be in flight)."""
        cutoff = time.time() - older_than
        held = await self.redis.zrangebyscore(active_key(tenant), "-inf", cutoff)
        stale = [n for n in held if n not in live]
        if stale:
            await self.redis.zrem(active_key(tenant), *stale)
        return len(stale)


def rate_decision(allowed: bool, limit: int, used: int, reset: int) -> Decision:
    """A per-minute window's decision: `used` requests counted so far, `reset` seconds left."""
    remaining = max(0, limit - used) if allowed else 0
    return Decision(allowed, "ok" if allowed else "rate", limit, remaining, reset, _headers(limit, remaining, reset))


def _headers(limit: int, remaining: int, reset: int) -> dict[str, str]:
    return {"X-RateLimit-Limit": str(limit), "X-RateLimit-Remaining": str(max(0, remaining)),
            "X-RateLimit-Reset": str(reset)}


def quota_headers(limit: int, remaining: int, reset: int) -> dict[str, str]:
    """The month's units: limit, what is left, seconds until the month (UTC) ends."""
    return {"X-Quota-Limit": str(limit), "X-Quota-Remaining": str(max(0, remaining)), "X-Quota-Reset": str(reset)}


async def eviction_problem(redis: Redis) -> str | None:
    """Why this Redis may lose keys (quotas, idempotency records, webhook deliveries), or None.

    Keys are counters and records, not a cache: a policy other than `noeviction` lets Redis
    drop them under memory pressure, so the front end reports not ready. Read from
    `INFO memory`, which managed offerings that disable CONFIG still answer.
    """
    info = await redis.info("memory")
    policy = info.get("maxmemory_policy")
    if isinstance(policy, bytes):
        policy = policy.decode()
    if policy is None:
        return "INFO memory does not report maxmemory_policy; it must be noeviction"
    if policy != "noeviction":
        return f"maxmemory-policy is {policy!r}; it must be 'noeviction' (Redis would evict quota and idempotency keys)"
    return None
