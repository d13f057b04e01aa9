"""kubernetes_asyncio sessions stop consulting the environment per request unless a proxy
variable asks for it."""

from __future__ import annotations

import asyncio

import pytest
from kubernetes_asyncio import client

from spatialforge.kubeclient import PROXY_VARIABLES, tuned


async def _trust_env_after_tuning() -> bool:
    api = client.ApiClient(client.Configuration())
    try:
        return tuned(api).rest_client.pool_manager.trust_env
    finally:
        await api.close()


def test_session_ignores_the_environment_by_default(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in PROXY_VARIABLES:
        monkeypatch.delenv(name, raising=False)
    assert asyncio.run(_trust_env_after_tuning()) is False


def test_a_proxy_variable_keeps_the_environment_trusted(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("HTTPS_PROXY", "http://proxy.example:3128")
    assert asyncio.run(_trust_env_after_tuning()) is True
