"""Every router, collected."""

from fastapi import APIRouter

from spatialforge.apiserver.api.routes import billing, health, jobs, keys, stripe_webhooks, uploads, usage

api_router = APIRouter()
for module in (health, jobs, uploads, usage, keys, billing, stripe_webhooks):
    api_router.include_router(module.router)
