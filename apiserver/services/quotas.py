"""Per-minute rate limits and monthly unit quotas, checked and charged in one Lua script.

Redis runs a script atomically, so 50 parallel requests at a quota edge admit exactly the
remainder: nothing reads a counter and writes it back from Python. A refused request is
charged nothing.
"""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass

from redis.asyncio import Redis

# KEYS[1] rate window counter, KEYS[2] month usage hash (may be absent for cost 0)
# ARGV rate_limit (0: no rate check), window_ttl, cost, unit_limit
_CHECK_AND_CHARGE = """
local rl = tonumber(ARGV[1])
local r = 0
if rl > 0 then
  r = tonumber(redis.call('GET', KEYS[1]) or '0')
  if r >= rl then return {0, r, -1} end
end
local cost = tonumber(ARGV[3])
local u = -1
if cost > 0 then
  u = tonumber(redis.call('HGET', KEYS[2], 'units') or '0')
  if u + cost > tonumber(ARGV[4]) then return {-1, r, u} end
  u = redis.call('HINCRBY', KEYS[2], 'units', cost)
  redis.call('EXPIRE', KEYS[2], 3456000)
end
if rl > 0 then
  r = redis.call('INCR', KEYS[1])
  if r == 1 then redis.call('EXPIRE', KEYS[1], ARGV[2]) end
end
return {1, r, u}
"""

WINDOW = 60


@dataclass
class Decision:
    allowed: bool
    reason: str  # "ok" | "rate" | "quota"
    limit: int
    remaining: int
    reset: int  # seconds until the limit resets
    headers: dict[str, str]


def month(now: dt.datetime | None = None) -> str:
    return (now or dt.datetime.now(dt.UTC)).strftime("%Y-%m")


def usage_key(tenant: str, when: str | None = None) -> str:
    return f"usage:{tenant}:{when or month()}"


def _seconds_to_month_end(now: dt.datetime) -> int:
    first_next = (now.replace(day=28) + dt.timedelta(days=4)).replace(day=1, hour=0, minute=0, second=0, microsecond=0)
    return max(1, int((first_next - now).total_seconds()))


class Quotas:
    def __init__(self, redis: Redis) -> None:
        self.redis = redis
        self._script = redis.register_script(_CHECK_AND_CHARGE)

    async def check(self, subject: str, *, rate_limit: int, cost: int = 0, unit_limit: int = 0,
                    tenant: str | None = None) -> Decision:
        """Admit one request of `subject` (rate) costing `cost` units of `tenant`'s month."""
        now = dt.datetime.now(dt.UTC)
        epoch = int(now.timestamp())
        window = epoch // WINDOW
        rate_key = f"rl:{subject}:{window}"
        reset = WINDOW - epoch % WINDOW
        keys = [rate_key, usage_key(tenant or subject, month(now))]
        ok, used, units = await self._script(keys=keys, args=[rate_limit, WINDOW + 5, cost, unit_limit])
        if ok == 0:
            return rate_decision(False, rate_limit, used, reset)
        if ok == -1:
            to_month_end = _seconds_to_month_end(now)
            headers = _headers(unit_limit, max(0, unit_limit - units), to_month_end)
            return Decision(False, "quota", unit_limit, max(0, unit_limit - units), to_month_end, headers)
        if cost > 0:
            headers = _headers(unit_limit, max(0, unit_limit - units), _seconds_to_month_end(now))
            return Decision(True, "ok", unit_limit, unit_limit - units, _seconds_to_month_end(now), headers)
        return rate_decision(True, rate_limit, used, reset)

    async def refund(self, tenant: str, cost: int) -> None:
        """Give units back when a charged request could not create its job."""
        if cost:
            await self.redis.hincrby(usage_key(tenant), "units", -cost)


def rate_decision(allowed: bool, limit: int, used: int, reset: int) -> Decision:
    """A per-minute window's decision: `used` requests counted so far, `reset` seconds left."""
    remaining = max(0, limit - used) if allowed else 0
    return Decision(allowed, "ok" if allowed else "rate", limit, remaining, reset, _headers(limit, remaining, reset))


def _headers(limit: int, remaining: int, reset: int) -> dict[str, str]:
    return {"X-RateLimit-Limit": str(limit), "X-RateLimit-Remaining": str(max(0, remaining)),
            "X-RateLimit-Reset": str(reset)}
