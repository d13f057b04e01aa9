"""Stripe webhooks: the signature is verified first, each event is applied once.

A correctly signed event is never refused by a limit. Calls whose signature does not verify
count against the caller's address (`stripe_webhook_per_ip_per_minute`, then 429), so junk
from one address (or from everyone behind one ingress) cannot hold off Stripe's events.
"""

from __future__ import annotations

from fastapi import APIRouter, Request

from spatialforge.apiserver.api.deps import BillingDep, MetricsDep, QuotasDep, SettingsDep
from spatialforge.apiserver.errors import RateLimited
from spatialforge.apiserver.middleware import client_address
from spatialforge.apiserver.services.billing import BadSignature

router = APIRouter(tags=["billing"])


@router.post("/v1/billing/webhooks",
             responses={400: {"description": "bad signature, or a signed payload that is not a handled event"},
                        429: {"description": "too many unsigned calls from this address"}})
async def stripe_webhook(request: Request, billing: BillingDep, quotas: QuotasDep, settings: SettingsDep,
                         metrics: MetricsDep) -> dict[str, str]:
    """Stripe events (checkout, subscription, invoice)."""
    payload = await request.body()  # bounded by max_body_bytes (GuardMiddleware)
    try:
        event = billing.verify(payload, request.headers.get("stripe-signature"))
    except BadSignature as exc:
        decision = await quotas.check(f"stripe-unsigned:{client_address(request.scope)}",
                                      rate_limit=settings.stripe_webhook_per_ip_per_minute)
        if not decision.allowed:
            metrics.refusals.labels("webhook_ip").inc()
            raise RateLimited("too many unsigned webhook calls from this address",
                              headers={**decision.headers, "Retry-After": str(decision.reset)}) from None
        raise exc from None
    result = await billing.handle(event)
    return {"id": event.id, "result": result}
