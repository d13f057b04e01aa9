"""`spatialforge api ...`: serve the front end, manage keys and plans, read usage.

Key and plan commands talk to Redis (and, for plans, the Kubernetes API) directly with the
same settings as the server, so they work before any admin key exists.
"""

from __future__ import annotations

import asyncio
import json
import sys
from collections.abc import Awaitable, Callable
from typing import Any

import click
from pydantic import ValidationError


def _settings():  # type: ignore[no-untyped-def]
    from spatialforge.apiserver.core.config import Settings

    try:
        return Settings()
    except ValidationError as exc:
        messages = "; ".join(str(e["msg"]).removeprefix("Value error, ") for e in exc.errors())
        raise click.ClickException(messages) from None


def _run(fn: Callable[..., Awaitable[Any]]) -> Any:
    async def main() -> Any:
        import redis.asyncio as aioredis

        from spatialforge.apiserver.services.tenants import Tenants

        settings = _settings()
        redis = aioredis.Redis.from_url(settings.redis_url, decode_responses=True, socket_connect_timeout=2)
        try:
            return await fn(settings, Tenants(redis, settings.hmac_key()), redis)
        finally:
            await redis.aclose()

    return asyncio.run(main())


def _echo(data: Any) -> None:
    click.echo(json.dumps(data, indent=2, sort_keys=True))


@click.group("api")
def apiserver_cli() -> None:
    """The REST front end: serve it, manage API keys and plans, read usage."""


@apiserver_cli.command()
@click.option("--host", default="127.0.0.1", show_default=True)
@click.option("--port", default=8000, show_default=True, type=int)
@click.option("--workers", default=1, show_default=True, type=click.IntRange(1, 64),
              help="Worker processes sharing the port (each with its own watch cache and clients).")
def serve(host: str, port: int, workers: int) -> None:
    """Serve the API (settings from SPATIALFORGE_API_* environment variables)."""
    import uvicorn

    from spatialforge.apiserver.main import create_app

    app = create_app(_settings())  # validates the settings (and refuses weak secrets) before forking
    if workers == 1:
        uvicorn.run(app, host=host, port=port, log_config=None, proxy_headers=False, access_log=False)
    else:
        uvicorn.run("spatialforge.apiserver.main:create_app", factory=True, workers=workers, host=host, port=port,
                    log_config=None, proxy_headers=False, access_log=False)


@apiserver_cli.group()
def keys() -> None:
    """API keys (only their HMACs are stored)."""


@keys.command("create")
@click.argument("tenant")
@click.option("--admin", is_flag=True, help="An admin key (may call /v1/admin/...).")
@click.option("--test", "test_key", is_flag=True, help="An sf_test_ key instead of sf_live_.")
@click.option("--name", default="", help="A label for listings.")
def keys_create(tenant: str, admin: bool, test_key: bool, name: str) -> None:
    """Create a key for TENANT; it is printed once."""
    from spatialforge.apiserver.services.tenants import TenantError

    async def go(settings: Any, tenants: Any, redis: Any) -> dict[str, str]:
        issued = await tenants.create_key(tenant, role="admin" if admin else "user", live=not test_key, name=name)
        return {"key": issued.key, "key_id": issued.key_id, "tenant": issued.tenant, "role": issued.role}

    try:
        _echo(_run(go))
    except TenantError as exc:
        raise click.ClickException(str(exc)) from None


@keys.command("list")
@click.option("--tenant", default=None)
def keys_list(tenant: str | None) -> None:
    """List keys (ids, tenants, roles, revocation), never the keys."""
    _echo(_run(lambda s, t, r: t.list_keys(tenant)))


@keys.command("revoke")
@click.argument("key_id")
def keys_revoke(key_id: str) -> None:
    """Revoke KEY_ID at once."""
    record = _run(lambda s, t, r: t.revoke(key_id))
    if record is None:
        raise click.ClickException(f"no key {key_id}")
    _echo(record)


@keys.command("rotate")
@click.argument("key_id")
def keys_rotate(key_id: str) -> None:
    """Issue a new key for KEY_ID's tenant and revoke KEY_ID."""
    issued = _run(lambda s, t, r: t.rotate(key_id))
    if issued is None:
        raise click.ClickException(f"no active key {key_id}")
    _echo({"key": issued.key, "key_id": issued.key_id, "tenant": issued.tenant, "role": issued.role})


@apiserver_cli.group()
def plans() -> None:
    """Tenant plans and limits."""


@plans.command("set")
@click.argument("tenant")
@click.argument("plan", type=click.Choice(["free", "builder", "pro", "enterprise"]))
@click.option("--units", type=int, default=None, help="Monthly units (overrides the plan).")
@click.option("--rate", type=int, default=None, help="Requests per minute (overrides the plan).")
@click.option("--gpus", type=int, default=None, help="Concurrent GPUs (overrides the plan).")
@click.option("--no-kube", is_flag=True, help="Do not write the namespace's GPU-limit annotation now.")
def plans_set(tenant: str, plan: str, units: int | None, rate: int | None, gpus: int | None, no_kube: bool) -> None:
    """Set TENANT's PLAN; its GPU limit is written to the tenant namespace's annotation."""

    async def go(settings: Any, tenants: Any, redis: Any) -> dict[str, Any]:
        result = await tenants.set_plan(tenant, plan, units=units, rate=rate, gpus=gpus)
        if not no_kube:
            from spatialforge.apiserver.services.kube import Kube, make_api_client
            from spatialforge.apiserver.services.namespaces import Namespaces

            api = await make_api_client(settings.kubeconfig)
            try:
                await Namespaces(Kube(api), tenants, settings.namespace_prefix).apply_plan(tenant)
            finally:
                await api.close()
        return result.model_dump()

    _echo(_run(go))


@apiserver_cli.command()
@click.argument("tenant")
def usage(tenant: str) -> None:
    """TENANT's month so far."""
    from spatialforge.apiserver.services import usage as usage_service

    async def go(settings: Any, tenants: Any, redis: Any) -> dict[str, Any]:
        return await usage_service.usage(tenants, redis, tenant)

    _echo(_run(go))


if __name__ == "__main__":
    sys.exit(apiserver_cli())
