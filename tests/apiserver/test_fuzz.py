"""A schema fuzz of the OpenAPI (schemathesis): generated requests to every operation, with a
tenant key (an admin key for /v1/admin), never get a 5xx."""

from __future__ import annotations

import httpx
import pytest
import schemathesis
from hypothesis import HealthCheck, settings

from spatialforge.apiserver.core.config import Settings
from spatialforge.apiserver.main import create_app

# The schema is the app's own (built at collection, no server needed); requests go to the
# session's real server.
schema = schemathesis.openapi.from_dict(create_app(Settings(dev_mode=True, log_json=False)).openapi())


@pytest.fixture(scope="module")
def fuzz_keys(api, admin_key):
    with httpx.Client(base_url=api.url, headers={"X-API-Key": admin_key}) as admin:
        key = admin.post("/v1/admin/keys", json={"tenant": "fuzz"}).json()["key"]
        assert admin.put("/v1/admin/tenants/fuzz/plan", json={"plan": "free", "rate_per_minute": 100_000}).status_code == 200
    return {"user": key, "admin": admin_key}


@schema.parametrize()
@settings(max_examples=15, deadline=None, suppress_health_check=list(HealthCheck))
def test_no_server_errors(case, fuzz_keys, api):
    key = fuzz_keys["admin" if case.path.startswith("/v1/admin") else "user"]
    response = case.call(base_url=api.url, headers={"X-API-Key": key}, timeout=30)
    assert response.status_code < 500, (case.method, case.path, case.body, case.query, response.text[:500])
