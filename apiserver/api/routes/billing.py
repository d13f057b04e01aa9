"""Stripe Checkout and the customer portal."""

from __future__ import annotations

from fastapi import APIRouter, Body

from spatialforge.apiserver.api.deps import ApiKeyDep, BillingDep
from spatialforge.apiserver.schemas import CheckoutCreate, SessionPublic

router = APIRouter(prefix="/v1/billing", tags=["billing"])


@router.post("/checkout", response_model=SessionPublic)
async def checkout(principal: ApiKeyDep, billing: BillingDep,
                   body: CheckoutCreate = Body(openapi_examples={"pro": {"value": {"plan": "pro"}}})) -> dict:
    """A Checkout session for the plan's price; send the customer to `url` (422 `not_for_sale`)."""
    return await billing.checkout(principal.tenant, body.plan)


@router.post("/portal", response_model=SessionPublic)
async def portal(principal: ApiKeyDep, billing: BillingDep) -> dict:
    """A customer-portal session (invoices, payment method, cancel)."""
    return await billing.portal(principal.tenant)
