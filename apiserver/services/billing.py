"""Stripe: checkout and portal sessions, webhook events (each handled once), usage meter events.

The `stripe` library is configured once (`stripe.api_key`, `stripe.api_base`: stripe-mock in
tests). Usage of every finished job is reported once per resource uid: a Redis claim makes
it once across replicas and restarts, and the meter event carries the uid as its
`identifier`, which Stripe itself de-duplicates.
"""

from __future__ import annotations

import json
import logging
import math
import time
from typing import Any

import stripe
from starlette.concurrency import run_in_threadpool

from spatialforge.apiserver.core.config import Settings
from spatialforge.apiserver.services import quotas
from spatialforge.apiserver.services.tenants import Tenants

log = logging.getLogger("spatialforge.apiserver.billing")
EVENT_TTL = 60 * 86400
HANDLED_EVENTS = ("checkout.session.completed", "customer.subscription.updated", "customer.subscription.deleted",
                  "invoice.paid", "invoice.payment_failed")


class BillingError(RuntimeError):
    pass


def configure_stripe(settings: Settings) -> None:
    stripe.api_key = settings.stripe_api_key.get_secret_value() if settings.stripe_api_key else None
    if settings.stripe_api_base:
        stripe.api_base = settings.stripe_api_base
    stripe.max_network_retries = 2


class Billing:
    def __init__(self, settings: Settings, tenants: Tenants, plan_changed: Any, metrics: Any) -> None:
        self.settings = settings
        self.tenants = tenants
        self.redis = tenants.redis
        self.plan_changed = plan_changed  # async (tenant) -> None: re-applies the GPU limit
        self.metrics = metrics
        self.price_to_plan = {price: plan for plan, price in settings.stripe_prices.items()}

    # --- sessions -------------------------------------------------------------------------
    async def customer(self, tenant: str) -> str:
        info = await self.tenants.info(tenant)
        if info.get("stripe_customer"):
            return info["stripe_customer"]
        cus = await run_in_threadpool(stripe.Customer.create, metadata={"tenant": tenant},
                                      idempotency_key=f"customer-{tenant}")
        await self.tenants.link_customer(tenant, cus.id)
        return cus.id

    async def checkout(self, tenant: str, plan: str) -> dict[str, str]:
        price = self.settings.stripe_prices.get(plan)
        if not price:
            raise BillingError(f"plan {plan!r} is not sold through checkout")
        customer = await self.customer(tenant)
        base = self.settings.public_url.rstrip("/")
        session = await run_in_threadpool(
            stripe.checkout.Session.create, mode="subscription", customer=customer,
            line_items=[{"price": price, "quantity": 1}], client_reference_id=tenant,
            metadata={"tenant": tenant, "plan": plan},
            success_url=f"{base}/v1/billing/done?session={{CHECKOUT_SESSION_ID}}", cancel_url=f"{base}/v1/billing/cancelled")
        return {"id": session.id, "url": session.url}

    async def portal(self, tenant: str) -> dict[str, str]:
        customer = await self.customer(tenant)
        session = await run_in_threadpool(stripe.billing_portal.Session.create, customer=customer,
                                          return_url=self.settings.public_url)
        return {"id": session.id, "url": session.url}

    # --- webhooks -------------------------------------------------------------------------
    def verify(self, payload: bytes, signature: str | None) -> stripe.Event:
        """Raises ValueError or stripe.SignatureVerificationError on a bad payload/signature."""
        secret = self.settings.stripe_webhook_secret.get_secret_value() if self.settings.stripe_webhook_secret else ""
        return stripe.Webhook.construct_event(payload, signature, secret)

    async def handle(self, event: stripe.Event) -> str:
        """Apply one event once; returns 'handled', 'duplicate' or 'ignored'."""
        claim = f"stripe:event:{event.id}"
        if not await self.redis.set(claim, "processing", nx=True, ex=EVENT_TTL):
            self.metrics.stripe_events.labels(event.type, "duplicate").inc()
            return "duplicate"
        try:
            result = await self._apply(event.type, event.data.object.to_dict())
        except Exception:
            await self.redis.delete(claim)  # let Stripe's retry try again
            raise
        await self.redis.set(claim, result, ex=EVENT_TTL)
        self.metrics.stripe_events.labels(event.type, result).inc()
        return result

    async def _tenant_of(self, obj: dict[str, Any]) -> str | None:
        customer = obj.get("customer")
        if isinstance(customer, dict):
            customer = customer.get("id")
        tenant = await self.tenants.by_customer(customer) if customer else None
        return tenant or (obj.get("metadata") or {}).get("tenant") or obj.get("client_reference_id")

    async def _set_plan(self, tenant: str, plan: str) -> None:
        info = await self.tenants.info(tenant)
        overrides = {k: int(info[k]) if info.get(k) else None for k in ("units", "rate", "gpus")}
        await self.tenants.set_plan(tenant, plan, **overrides)
        await self.plan_changed(tenant)
        log.info("tenant %s now on plan %s", tenant, plan)

    async def _apply(self, kind: str, obj: dict[str, Any]) -> str:
        if kind not in HANDLED_EVENTS:
            return "ignored"
        tenant = await self._tenant_of(obj)
        if not tenant:
            log.warning("Stripe event %s names no known tenant", kind)
            return "ignored"
        if kind == "checkout.session.completed":
            if obj.get("customer"):
                await self.tenants.link_customer(tenant, obj["customer"])
            if obj.get("subscription"):
                await self.tenants.set_fields(tenant, stripe_subscription=str(obj["subscription"]))
            plan = (obj.get("metadata") or {}).get("plan")
            if plan:
                await self._set_plan(tenant, plan)
        elif kind == "customer.subscription.updated":
            status = obj.get("status")
            items = ((obj.get("items") or {}).get("data") or [])
            price = (items[0].get("price") or {}).get("id") if items else None
            plan = self.price_to_plan.get(price or "")
            if status in ("active", "trialing") and plan:
                await self._set_plan(tenant, plan)
            elif status in ("canceled", "unpaid", "incomplete_expired"):
                await self._set_plan(tenant, "free")
            # past_due: the grace period started by invoice.payment_failed decides.
        elif kind == "customer.subscription.deleted":
            await self._set_plan(tenant, "free")
        elif kind == "invoice.paid":
            await self.tenants.clear_fields(tenant, "grace_until")
            await self.plan_changed(tenant)
        elif kind == "invoice.payment_failed":
            info = await self.tenants.info(tenant)
            if not info.get("grace_until"):
                await self.tenants.set_fields(tenant, grace_until=str(time.time() + self.settings.payment_grace_seconds))
        return "handled"

    # --- usage ----------------------------------------------------------------------------
    async def report_usage(self, tenant: str, uid: str, gpu_seconds: float, phase: str) -> str:
        """Record a finished job's GPU-seconds once (locally and as a Stripe meter event)."""
        claim = f"usage:job:{uid}"
        if not await self.redis.set(claim, "claimed", nx=True):
            self.metrics.usage_reports.labels("duplicate").inc()
            return "duplicate"
        try:
            info = await self.tenants.info(tenant)
            stripe_id = ""
            if info.get("stripe_customer"):
                value = str(max(0, math.ceil(gpu_seconds)))
                event = await run_in_threadpool(
                    stripe.billing.MeterEvent.create, event_name=self.settings.stripe_meter_event,
                    payload={"stripe_customer_id": info["stripe_customer"], "value": value}, identifier=uid)
                stripe_id = event.identifier or uid
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
