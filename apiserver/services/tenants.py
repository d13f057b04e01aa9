"""Tenants and API keys in Redis. Only HMACs of keys are stored.

    apikey:{hash}        hash: tenant, role, created, revoked, key_id, name
    keyid:{key_id}       -> hash
    tenant:{t}:keys      set of key ids
    tenant:{t}           hash: plan, units/rate/gpus overrides, stripe_customer,
                         stripe_subscription, grace_until
    tenants              set of tenant ids
    stripe:customer:{c}  -> tenant
"""

from __future__ import annotations

import re
import time
from dataclasses import dataclass

from redis.asyncio import Redis

from spatialforge.apiserver.core import security
from spatialforge.apiserver.errors import InvalidRequest
from spatialforge.apiserver.services import plans

TENANT_PATTERN = re.compile(r"^[a-z0-9]([a-z0-9-]{0,38}[a-z0-9])?$")


class TenantError(InvalidRequest):
    """A tenant id or plan name that cannot be (422 `invalid_tenant`)."""

    code = "invalid_tenant"


@dataclass
class Principal:
    tenant: str
    role: str  # "user" | "admin"
    key_id: str


@dataclass
class IssuedKey:
    key: str
    key_id: str
    tenant: str
    role: str


def check_tenant(tenant: str) -> str:
    if not TENANT_PATTERN.match(tenant):
        raise TenantError("tenant ids are 1-40 lowercase letters, digits and '-'")
    return tenant


class Tenants:
    def __init__(self, redis: Redis, secret: bytes) -> None:
        self.redis = redis
        self.secret = secret

    # --- keys -----------------------------------------------------------------------------
    async def create_key(self, tenant: str, *, role: str = "user", live: bool = True, name: str = "") -> IssuedKey:
        check_tenant(tenant)
        key = security.generate_key(live)
        digest = security.hash_key(self.secret, key)
        kid = security.key_id(digest)
        now = str(int(time.time()))
        async with self.redis.pipeline(transaction=True) as p:
            p.hset(f"apikey:{digest}", mapping={"tenant": tenant, "role": role, "created": now, "revoked": "",
                                                "key_id": kid, "name": name, "hash": digest,
                                                "live": "1" if live else ""})
            p.set(f"keyid:{kid}", digest)
            p.sadd(f"tenant:{tenant}:keys", kid)
            p.sadd("tenants", tenant)
            p.hsetnx(f"tenant:{tenant}", "plan", "free")
            await p.execute()
        return IssuedKey(key=key, key_id=kid, tenant=tenant, role=role)

    async def list_keys(self, tenant: str | None = None) -> list[dict[str, str]]:
        tenants = [tenant] if tenant else sorted(await self.redis.smembers("tenants"))
        out = []
        for t in tenants:
            for kid in sorted(await self.redis.smembers(f"tenant:{t}:keys")):
                digest = await self.redis.get(f"keyid:{kid}")
                record = await self.redis.hgetall(f"apikey:{digest}") if digest else {}
                if record:
                    out.append({k: record.get(k, "") for k in ("key_id", "tenant", "role", "name", "created", "revoked")})
        return out

    async def revoke(self, kid: str) -> dict[str, str] | None:
        digest = await self.redis.get(f"keyid:{kid}")
        if not digest:
            return None
        await self.redis.hset(f"apikey:{digest}", "revoked", str(int(time.time())))
        record = await self.redis.hgetall(f"apikey:{digest}")
        return {k: record.get(k, "") for k in ("key_id", "tenant", "role", "name", "created", "revoked")}

    async def rotate(self, kid: str) -> IssuedKey | None:
        """A new key for the same tenant and role; the old one is revoked."""
        digest = await self.redis.get(f"keyid:{kid}")
        record = await self.redis.hgetall(f"apikey:{digest}") if digest else {}
        if not record or record.get("revoked"):
            return None
        issued = await self.create_key(record["tenant"], role=record.get("role", "user"),
                                       live=bool(record.get("live", "1")), name=record.get("name", ""))
        await self.revoke(kid)
        return issued

    # --- plans ----------------------------------------------------------------------------
    async def info(self, tenant: str) -> dict[str, str]:
        return await self.redis.hgetall(f"tenant:{tenant}")

    async def plan(self, tenant: str) -> plans.Plan:
        info = await self.info(tenant)
        return plans.effective(self.effective_name(info), info)

    @staticmethod
    def effective_name(info: dict[str, str]) -> str:
        """The plan in force: free once a payment grace period has run out."""
        grace = info.get("grace_until")
        if grace and float(grace) < time.time():
            return "free"
        return info.get("plan", "free")

    async def set_plan(self, tenant: str, plan: str, *, units: int | None = None, rate: int | None = None,
                       gpus: int | None = None) -> plans.Plan:
        check_tenant(tenant)
        if plan not in plans.PLANS:
            raise TenantError(f"unknown plan {plan!r} (one of {', '.join(plans.PLANS)})")
        mapping: dict[str, str] = {"plan": plan}
        for key, value in (("units", units), ("rate", rate), ("gpus", gpus)):
            mapping[key] = "" if value is None else str(value)
        async with self.redis.pipeline(transaction=True) as p:
            p.hset(f"tenant:{tenant}", mapping=mapping)
            p.hdel(f"tenant:{tenant}", "grace_until")
            p.sadd("tenants", tenant)
            await p.execute()
        return await self.plan(tenant)

    async def set_fields(self, tenant: str, **fields: str) -> None:
        await self.redis.hset(f"tenant:{tenant}", mapping=fields)

    async def clear_fields(self, tenant: str, *names: str) -> None:
        await self.redis.hdel(f"tenant:{tenant}", *names)

    async def by_customer(self, customer: str) -> str | None:
        return await self.redis.get(f"stripe:customer:{customer}")

    async def link_customer(self, tenant: str, customer: str) -> None:
        await self.redis.set(f"stripe:customer:{customer}", tenant)
        await self.redis.hset(f"tenant:{tenant}", "stripe_customer", customer)
