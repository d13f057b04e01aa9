"""Stripe Checkout and the customer portal."""

from __future__ import annotations

from fastapi import APIRouter, Body

from spatialforge.apiserver.api.deps import ApiKeyDep, ServicesDep
from spatialforge.apiserver.core.errors import ApiError
from spatialforge.apiserver.schemas import CheckoutCreate, SessionPublic
from spatialforge.apiserver.services.billing import BillingError

router = APIRouter(prefix="/v1/billing", tags=["billing"])


@router.post("/checkout", response_model=SessionPublic)
async def checkout(principal: ApiKeyDep, services: ServicesDep,
                   body: CheckoutCreate = Body(openapi_examples={"pro": {"value": {"plan": "pro"}}})) -> dict:
    """A Checkout session for the plan's price; send the customer to `url`."""
    try:
        return await services.billing.checkout(principal.tenant, body.plan)
    except BillingError as exc:
        raise ApiError(422, "not_for_sale", str(exc)) from None


@router.post("/portal", response_model=SessionPublic)
async def portal(principal: ApiKeyDep, services: ServicesDep) -> dict:
    """A customer-portal session (invoices, payment method, cancel)."""
    return await services.billing.portal(principal.tenant)
