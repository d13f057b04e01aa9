"""Stripe webhooks: verified with the stripe library, each event applied once."""

from __future__ import annotations

import stripe
from fastapi import APIRouter, Request

from spatialforge.apiserver.api.deps import ServicesDep
from spatialforge.apiserver.core.errors import ApiError

router = APIRouter(tags=["billing"])


@router.post("/v1/billing/webhooks")
async def stripe_webhook(request: Request, services: ServicesDep) -> dict[str, str]:
    """Stripe events (checkout, subscription, invoice). A per-IP limit guards the endpoint."""
    ip = request.client.host if request.client else "unknown"
    decision = await services.quotas.check(f"ip:{ip}", rate_limit=services.settings.stripe_webhook_per_ip_per_minute)
    if not decision.allowed:
        services.metrics.refusals.labels("webhook_ip").inc()
        raise ApiError(429, "rate_limited", "too many webhook calls from this address",
                       {**decision.headers, "Retry-After": str(decision.reset)})
    payload = await request.body()
    try:
        event = services.billing.verify(payload, request.headers.get("stripe-signature"))
    except (ValueError, stripe.SignatureVerificationError):
        raise ApiError(400, "bad_signature", "the payload or its Stripe-Signature is invalid") from None
    result = await services.billing.handle(event)
    return {"id": event.id, "result": result}
