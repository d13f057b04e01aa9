"""Stripe: checkout and portal sessions, webhook events (each handled once), usage meter events.

Each Billing has its own asynchronous `stripe.StripeClient` (api base: stripe-mock in tests). Usage of every finished job is reported once per resource uid: a Redis claim makes
it once across replicas and restarts, and the meter event carries the uid as its
`identifier`, which Stripe itself de-duplicates.

Payment grace: invoice.payment_failed sets the tenant's `grace_until` and indexes the tenant
in the sorted set `grace:due` (score = grace_until). `end_grace` degrades a tenant whose grace
ran out to free and re-applies its GPU limit; it runs lazily on the tenant's requests and from
`GraceSweeper`, a periodic task that claims due tenants from the index (a Lua script moves
their score to now + lease, so one replica handles each), so a tenant who never calls the API
is degraded too. A `SET NX grace:applied:<tenant>:<grace_until>` makes the downgrade happen
once per grace period, whichever path and replica gets there first.
"""

from __future__ import annotations

import asyncio
import json
import logging
import math
import time
from typing import Any

import stripe
from pydantic import BaseModel, ConfigDict, Field, ValidationError
from redis.asyncio import Redis

from spatialforge.aio import cancel_and_wait
from spatialforge.apiserver.core.config import Settings
from spatialforge.apiserver.core.metrics import Metrics
from spatialforge.apiserver.errors import BadRequest, InvalidRequest
from spatialforge.apiserver.services import plans, quotas
from spatialforge.apiserver.services.namespaces import Namespaces
from spatialforge.apiserver.services.tenants import TenantError, Tenants, check_tenant

log = logging.getLogger("spatialforge.apiserver.billing")
EVENT_TTL = 60 * 86400
HANDLED_EVENTS = ("checkout.session.completed", "customer.subscription.updated", "customer.subscription.deleted",
                  "invoice.paid", "invoice.payment_failed")
GRACE_DUE = "grace:due"  # sorted set: tenant -> grace_until (or the end of a sweeper's lease)
GRACE_LEASE = 120.0  # a sweeper that dies holding a tenant leaves it to the next sweep after this
GRACE_APPLY_TTL = 60  # the once-per-grace-period claim; expires so a crashed applier is retried
GRACE_RETRY = 10.0
STRIPE_TIMEOUT = 20.0  # a downgrade whose GPU-limit write failed is retried by the sweep after this


def grace_reapply_key(tenant: str) -> str:
    """Set while a tenant was degraded but its namespace still shows the old GPU limit."""
    return f"grace:reapply:{tenant}"

# KEYS due; ARGV now, lease_until, limit -> the claimed members
_GRACE_CLAIM = """
local ids = redis.call('ZRANGEBYSCORE', KEYS[1], '-inf', ARGV[1], 'LIMIT', 0, tonumber(ARGV[3]))
for _, id in ipairs(ids) do redis.call('ZADD', KEYS[1], ARGV[2], id) end
return ids
"""

# KEYS due; ARGV member, lease_until, new score ('' removes) -> 1 if the lease was still ours
_GRACE_SETTLE = """
local score = redis.call('ZSCORE', KEYS[1], ARGV[1])
if not score or tonumber(score) ~= tonumber(ARGV[2]) then return 0 end
if ARGV[3] == '' then redis.call('ZREM', KEYS[1], ARGV[1]) else redis.call('ZADD', KEYS[1], ARGV[3], ARGV[1]) end
return 1
"""


class BadSignature(BadRequest):
    """The payload or its Stripe-Signature does not verify (counted against the caller's address)."""

    code = "bad_signature"


class BadEvent(BadRequest):
    """A correctly signed event that is not the shape its type needs (never applied)."""

    code = "bad_event"


class _Loose(BaseModel):
    model_config = ConfigDict(extra="ignore")


class _Ref(_Loose):
    id: str


class _Price(_Loose):
    id: str | None = None


class _Item(_Loose):
    price: _Price | None = None


class _Items(_Loose):
    data: list[_Item] = Field(default_factory=list)


class EventObject(_Loose):
    """The fields of `data.object` the handled events read, with the types Stripe sends."""

    customer: str | _Ref | None = None
    subscription: str | _Ref | None = None
    metadata: dict[str, str] | None = None
    client_reference_id: str | None = None
    status: str | None = None
    items: _Items | None = None

    def customer_id(self) -> str | None:
        return self.customer.id if isinstance(self.customer, _Ref) else self.customer

    def subscription_id(self) -> str | None:
        return self.subscription.id if isinstance(self.subscription, _Ref) else self.subscription

    def price_id(self) -> str | None:
        data = self.items.data if self.items else []
        return data[0].price.id if data and data[0].price else None


class _EventData(_Loose):
    object: dict[str, Any]


class StripeEvent(_Loose):
    """A verified Stripe event: only what `Billing.handle` reads."""

    id: str = Field(min_length=1, max_length=255)
    type: str = Field(min_length=1, max_length=255)
    data: _EventData


def _reason(exc: ValidationError) -> str:
    first = exc.errors()[0]
    where = ".".join(str(p) for p in first["loc"]) or "the event"
    return f"{where}: {first['msg']}"


def stripe_client(settings: Settings, http: stripe.HTTPXClient) -> stripe.StripeClient:
    """A Stripe client of this app's own (no module globals: several apps may share a process),
    asynchronous (httpx), so no Stripe call holds a thread or the event loop."""
    key = settings.stripe_api_key.get_secret_value() if settings.stripe_api_key else ""
    base = {"api": settings.stripe_api_base} if settings.stripe_api_base else None
    return stripe.StripeClient(key or "sk_test_dev_mode", base_addresses=base, max_network_retries=2,
                               http_client=http)


class Billing:
    def __init__(self, settings: Settings, *, redis: Redis, tenants: Tenants, namespaces: Namespaces,
                 metrics: Metrics) -> None:
        self.settings = settings
        self.redis = redis
        self.tenants = tenants
        self.namespaces = namespaces  # re-applies a tenant's GPU limit after a plan change
        self.metrics = metrics
        self.price_to_plan = {price: plan for plan, price in settings.stripe_prices.items()}
        self._http = stripe.HTTPXClient(timeout=STRIPE_TIMEOUT)
        self.stripe = stripe_client(settings, self._http)

    async def close(self) -> None:
        await self._http.close_async()

    # --- sessions -------------------------------------------------------------------------
    async def customer(self, tenant: str) -> str:
        info = await self.tenants.info(tenant)
        if info.get("stripe_customer"):
            return info["stripe_customer"]
        cus = await self.stripe.v1.customers.create_async({"metadata": {"tenant": tenant}},
                                                          {"idempotency_key": f"customer-{tenant}"})
        await self.tenants.link_customer(tenant, cus.id)
        return cus.id

    async def checkout(self, tenant: str, plan: str) -> dict[str, str]:
        price = self.settings.stripe_prices.get(plan)
        if not price:
            raise InvalidRequest(f"plan {plan!r} is not sold through checkout", code="not_for_sale")
        customer = await self.customer(tenant)
        base = self.settings.public_url.rstrip("/")
        session = await self.stripe.v1.checkout.sessions.create_async({
            "mode": "subscription", "customer": customer, "line_items": [{"price": price, "quantity": 1}],
            "client_reference_id": tenant, "metadata": {"tenant": tenant, "plan": plan},
            "success_url": f"{base}/v1/billing/done?session={{CHECKOUT_SESSION_ID}}",
            "cancel_url": f"{base}/v1/billing/cancelled"})
        return {"id": session.id, "url": session.url}

    async def portal(self, tenant: str) -> dict[str, str]:
        customer = await self.customer(tenant)
        session = await self.stripe.v1.billing_portal.sessions.create_async(
            {"customer": customer, "return_url": self.settings.public_url})
        return {"id": session.id, "url": session.url}

    # --- webhooks -------------------------------------------------------------------------
    def verify(self, payload: bytes, signature: str | None) -> StripeEvent:
        """The event, once its signature verified; BadSignature, or BadEvent when a signed
        payload is not an event of the shape handled here."""
        secret = self.settings.stripe_webhook_secret.get_secret_value() if self.settings.stripe_webhook_secret else ""
        try:
            stripe.WebhookSignature.verify_header(payload, signature, secret,
                                                  stripe.Webhook.DEFAULT_TOLERANCE)
        except (ValueError, stripe.SignatureVerificationError):
            raise BadSignature("the payload or its Stripe-Signature is invalid") from None
        try:
            return StripeEvent.model_validate_json(payload)
        except ValidationError as exc:
            raise BadEvent(f"not a Stripe event: {_reason(exc)}") from None

    async def handle(self, event: StripeEvent) -> str:
        """Apply one event once; returns 'handled', 'duplicate' or 'ignored'. A handled type
        whose object has the wrong shape, or names an impossible tenant id, is BadEvent
        before anything is claimed or changed."""
        obj: EventObject | None = None
        if event.type in HANDLED_EVENTS:
            try:
                obj = EventObject.model_validate(event.data.object)
            except ValidationError as exc:
                raise BadEvent(f"{event.type}: data.object.{_reason(exc)}") from None
            named = [v for v in ((obj.metadata or {}).get("tenant"), obj.client_reference_id) if v is not None]
            for tenant in named:
                try:
                    check_tenant(tenant)
                except TenantError:
                    raise BadEvent(f"{event.type}: {tenant[:64]!r} is not a tenant id") from None
            plan = (obj.metadata or {}).get("plan")
            if event.type == "checkout.session.completed" and plan is not None and plan not in plans.PLANS:
                raise BadEvent(f"{event.type}: metadata.plan {plan[:64]!r} is not a plan") from None
        claim = f"stripe:event:{event.id}"
        if not await self.redis.set(claim, "processing", nx=True, ex=EVENT_TTL):
            self.metrics.stripe_events.labels(event.type, "duplicate").inc()
            return "duplicate"
        try:
            result = "ignored" if obj is None else await self._apply(event.type, obj)
        except Exception:
            await self.redis.delete(claim)  # let Stripe's retry try again
            raise
        await self.redis.set(claim, result, ex=EVENT_TTL)
        self.metrics.stripe_events.labels(event.type, result).inc()
        return result

    async def _tenant_of(self, obj: EventObject) -> str | None:
        customer = obj.customer_id()
        tenant = await self.tenants.by_customer(customer) if customer else None
        return tenant or (obj.metadata or {}).get("tenant") or obj.client_reference_id

    async def _set_plan(self, tenant: str, plan: str) -> None:
        info = await self.tenants.info(tenant)
        overrides = {k: int(info[k]) if info.get(k) else None for k in ("units", "rate", "gpus")}
        await self.tenants.set_plan(tenant, plan, **overrides)  # also ends any grace period
        await self.redis.zrem(GRACE_DUE, tenant)
        await self.namespaces.apply_plan(tenant)
        log.info("tenant %s now on plan %s", tenant, plan)

    async def _apply(self, kind: str, obj: EventObject) -> str:
        tenant = await self._tenant_of(obj)
        if not tenant:
            log.warning("Stripe event %s names no known tenant", kind)
            return "ignored"
        if kind == "checkout.session.completed":
            customer, subscription = obj.customer_id(), obj.subscription_id()
            if customer:
                await self.tenants.link_customer(tenant, customer)
            if subscription:
                await self.tenants.set_fields(tenant, stripe_subscription=subscription)
            plan = (obj.metadata or {}).get("plan")
            if plan:
                await self._set_plan(tenant, plan)
        elif kind == "customer.subscription.updated":
            plan = self.price_to_plan.get(obj.price_id() or "")
            if obj.status in ("active", "trialing") and plan:
                await self._set_plan(tenant, plan)
            elif obj.status in ("canceled", "unpaid", "incomplete_expired"):
                await self._set_plan(tenant, "free")
            # past_due: the grace period started by invoice.payment_failed decides.
        elif kind == "customer.subscription.deleted":
            await self._set_plan(tenant, "free")
        elif kind == "invoice.paid":
            await self.tenants.clear_fields(tenant, "grace_until")
            await self.redis.zrem(GRACE_DUE, tenant)
            await self.namespaces.apply_plan(tenant)
        elif kind == "invoice.payment_failed":
            info = await self.tenants.info(tenant)
            grace = info.get("grace_until")
            if not grace:
                grace = str(time.time() + self.settings.payment_grace_seconds)
                await self.tenants.set_fields(tenant, grace_until=grace)
            await self.redis.zadd(GRACE_DUE, {tenant: float(grace)})  # the sweep's index
        return "handled"

    # --- payment grace --------------------------------------------------------------------
    def grace_sweeper(self, interval: float) -> GraceSweeper:
        """The periodic task (start/stop it) that ends expired grace periods nobody requested."""
        return GraceSweeper(self, self.redis, interval)

    async def grace_until(self, tenant: str) -> str | None:
        return (await self.tenants.info(tenant)).get("grace_until")

    async def sweep_tenant(self, tenant: str) -> bool:
        """The sweep's work for one due tenant: write a GPU limit an earlier downgrade could not
        write, then end its grace period if it ran out. True when this call degraded it."""
        if await self.redis.exists(grace_reapply_key(tenant)):  # degraded, GPU limit not written
            await self.namespaces.apply_plan(tenant)
            await self.redis.delete(grace_reapply_key(tenant))
        return await self.end_grace(tenant, via="sweep")

    async def current_plan(self, tenant: str) -> plans.Plan:
        """The plan in force for a request, in one Redis read; a payment grace period that ran
        out is ended here (the same path as the sweep) before the plan is read again."""
        info = await self.tenants.info(tenant)
        grace = info.get("grace_until")
        if grace and float(grace) < time.time() and await self.end_grace(tenant, via="request", info=info):
            info = await self.tenants.info(tenant)
        return plans.effective(Tenants.effective_name(info), info)

    async def end_grace(self, tenant: str, *, via: str, info: dict[str, str] | None = None) -> bool:
        """If the tenant's payment grace ran out, degrade it to free (and write its GPU limit
        to its namespace) once; True when this call did it. `via`: "request" or "sweep";
        `info`: the tenant's record when the caller just read it."""
        info = info if info is not None else await self.tenants.info(tenant)
        grace = info.get("grace_until")
        if not grace or float(grace) >= time.time():
            return False
        if info.get("plan", "free") == "free":  # nothing to degrade; just end the grace period
            await self.tenants.clear_fields(tenant, "grace_until")
            return False
        claim = f"grace:applied:{tenant}:{grace}"
        if not await self.redis.set(claim, via, nx=True, ex=GRACE_APPLY_TTL):
            return False  # another request or replica is applying it
        try:
            await self.tenants.set_plan(tenant, "free")
        except BaseException:
            await self.redis.delete(claim)
            raise
        self.metrics.grace_downgrades.labels(via).inc()
        log.warning("tenant %s: payment grace period over, plan degraded to free (%s)", tenant, via)
        try:
            await self.namespaces.apply_plan(tenant)
        except BaseException:  # the plan is free, the namespace not yet: the sweep writes it later
            await self.redis.set(grace_reapply_key(tenant), "1", ex=7 * 86400)
            await self.redis.zadd(GRACE_DUE, {tenant: time.time() + GRACE_RETRY})
            raise
        return True

    # --- usage ----------------------------------------------------------------------------
    async def report_usage(self, tenant: str, uid: str, gpu_seconds: float, phase: str) -> str:
        """Record a finished job's GPU-seconds once (locally and as a Stripe meter event)."""
        claim = f"usage:job:{uid}"
        if not await self.redis.set(claim, "claimed", nx=True):
            self.metrics.usage_reports.labels("duplicate").inc()
            return "duplicate"
        try:
            info = await self.tenants.info(tenant)
            stripe_id = ""  # the meter event's identifier (the uid; Stripe de-duplicates on it)
            if info.get("stripe_customer"):
                value = str(max(0, math.ceil(gpu_seconds)))
                await self.stripe.v1.billing.meter_events.create_async({
                    "event_name": self.settings.stripe_meter_event, "identifier": uid,
                    "payload": {"stripe_customer_id": info["stripe_customer"], "value": value}})
                stripe_id = uid
            async with self.redis.pipeline(transaction=True) as p:
                p.hincrbyfloat(quotas.usage_key(tenant), "gpu_seconds", gpu_seconds)
                p.hincrby(quotas.usage_key(tenant), f"jobs_{phase.lower()}", 1)
                await p.execute()
            await self.redis.rpush(f"usage:reports:{tenant}", json.dumps(
                {"uid": uid, "gpu_seconds": gpu_seconds, "phase": phase, "stripe": stripe_id, "at": int(time.time())}))
            await self.redis.set(claim, "reported")
        except Exception:
            await self.redis.delete(claim)
            self.metrics.usage_reports.labels("error").inc()
            raise
        self.metrics.usage_reports.labels("reported").inc()
        return "reported"


class GraceSweeper:
    """Every `interval` seconds, degrade the tenants whose grace period ran out (from the
    `grace:due` index, never a scan of all tenants). Safe with several replicas: a claim moves
    a tenant's score to the end of a lease, and only the lease holder settles it."""

    def __init__(self, billing: Billing, redis: Redis, interval: float, *, lease: float = GRACE_LEASE,
                 batch: int = 100) -> None:
        self.billing = billing
        self.redis = redis
        self.interval = interval
        self.lease = lease
        self.batch = batch
        self._claim = self.redis.register_script(_GRACE_CLAIM)
        self._settle = self.redis.register_script(_GRACE_SETTLE)
        self._task: asyncio.Task[None] | None = None

    def start(self) -> None:
        if self._task is None:
            self._task = asyncio.create_task(self._run(), name="grace-sweeper")

    async def stop(self) -> None:
        if self._task is not None:
            await cancel_and_wait([self._task])
            self._task = None

    async def _run(self) -> None:
        while True:
            try:
                await self.sweep()
                self.billing.metrics.grace_sweeps.inc()
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                log.warning("grace sweep failed (%s); next one in %.0fs", type(exc).__name__, self.interval)
            await asyncio.sleep(self.interval)

    async def sweep(self) -> int:
        """One pass; returns how many tenants this call degraded."""
        done = 0
        while True:
            now = time.time()
            lease_until = repr(now + self.lease)
            tenants = await self._claim(keys=[GRACE_DUE], args=[repr(now), lease_until, self.batch])
            for tenant in tenants:
                try:
                    done += await self.billing.sweep_tenant(tenant)
                except Exception:
                    log.exception("grace downgrade of tenant %s failed; retried after the lease", tenant)
                    continue
                grace = await self.billing.grace_until(tenant)
                if grace and float(grace) < time.time():
                    continue  # someone else is applying it: look again when our lease ends
                # Gone (degraded, paid, plan changed) or a later grace period: settle the entry.
                await self._settle(keys=[GRACE_DUE], args=[tenant, lease_until, grace or ""])
            if len(tenants) < self.batch:
                return done
