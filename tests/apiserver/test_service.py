"""Service qualities: health, readiness (503 with a reason when Redis is down, nothing
half-done), metrics, security headers, request ids, secrets never logged, refusing to start
with placeholder secrets."""

from __future__ import annotations

import logging

import httpx
import pytest
from pydantic import ValidationError

from spatialforge.apiserver.core.config import Settings
from tests.apiserver.conftest import SECRET_KEY, STRIPE_KEY, STRIPE_WEBHOOK_SECRET, wait_until
from tests.timeouts import MEDIUM


def test_health_ready_metrics(api, make_tenant):
    assert httpx.get(f"{api.url}/health").json() == {"status": "ok"}
    ready = httpx.get(f"{api.url}/readyz")
    assert ready.status_code == 200
    assert ready.json()["checks"] == {"redis": "ok", "kubernetes": "ok", "object_store": "ok"}
    registry = api.app.state.metrics.registry  # served on metrics_port (tests/apiserver/test_edge.py)
    labels = {"method": "GET", "route": "/v1/jobs", "status": "200"}
    before = registry.get_sample_value("sf_api_requests_total", labels) or 0
    with make_tenant("pro").client() as c:
        assert c.get("/v1/jobs").status_code == 200
    assert registry.get_sample_value("sf_api_requests_total", labels) == before + 1
    assert registry.get_sample_value("sf_api_request_seconds_count", {"method": "GET", "route": "/v1/jobs"}) >= 1


def test_security_headers_and_request_ids(api):
    r = httpx.get(f"{api.url}/v1/jobs", headers={"X-Request-ID": "abc-123"})
    assert r.headers["X-Request-ID"] == "abc-123" and r.json()["request_id"] == "abc-123"
    assert r.headers["Strict-Transport-Security"].startswith("max-age=")
    assert r.headers["X-Content-Type-Options"] == "nosniff" and r.headers["X-Frame-Options"] == "DENY"
    assert "default-src 'none'" in r.headers["Content-Security-Policy"]
    generated = httpx.get(f"{api.url}/health", headers={"X-Request-ID": "bad id!" * 10}).headers["X-Request-ID"]
    assert len(generated) == 32 and generated.isalnum()
    # The OpenAPI document (served only with public_docs: tests/apiserver/test_edge.py).
    op = api.app.openapi()["paths"]["/v1/depth-batches"]["post"]
    assert op["operationId"] == "jobs-create_depth_batch"
    assert op["requestBody"]["content"]["application/json"]["examples"]


def test_secrets_and_keys_never_logged(api, admin, make_tenant, caplog):
    caplog.set_level(logging.DEBUG)
    t = make_tenant("pro")
    leaked_key = admin.post("/v1/admin/keys", json={"tenant": t.id}).json()["key"]
    with t.client() as c:
        c.get("/v1/jobs", headers={"X-API-Key": leaked_key})
        c.post("/v1/depth-batches", json=t.depth_spec())
        c.post("/v1/billing/portal")
    httpx.get(f"{api.url}/v1/jobs", headers={"Authorization": f"Bearer {leaked_key}x"})
    # Something that logs a key by mistake is redacted too.
    logging.getLogger("spatialforge.apiserver.test").warning("oops %s and %s", t.key, SECRET_KEY)
    text = caplog.text + "\n".join(r.getMessage() for r in caplog.records)
    assert "tenant=" in text and "[REDACTED]" in text  # request lines were logged
    for secret in (t.key, leaked_key, SECRET_KEY, STRIPE_KEY, STRIPE_WEBHOOK_SECRET):
        assert secret not in text
    assert "sf_live_" not in text.replace("[REDACTED]", "")


@pytest.mark.parametrize("overrides, problem", [
    ({"secret_key": None}, "secret_key is missing"),
    ({"secret_key": "changeme"}, "secret_key is an example"),
    ({"secret_key": "short-but-random-Xy7"}, "at least 32 bytes"),
    ({"secret_key": "x" * 40}, "secret_key is an example"),
    ({"stripe_webhook_secret": "whsec_xxx"}, "stripe_webhook_secret is an example"),
    ({"stripe_api_key": None}, "stripe_api_key is missing"),
])
def test_refuses_to_start_with_weak_secrets(make_settings, overrides, problem, caplog):
    from spatialforge.apiserver.main import create_app

    with pytest.raises(ValidationError, match=problem):
        make_settings(**overrides)
    good = make_settings().model_dump()
    good.update(overrides)
    good["dev_mode"] = True
    caplog.set_level(logging.WARNING, logger="spatialforge.apiserver")
    app = create_app(Settings(**good))  # dev mode accepts it, with a warning, and serves the docs
    assert "dev mode: weak or missing secrets are accepted" in caplog.text
    assert app.state.settings.dev_mode and app.docs_url == "/docs" and app.openapi_url == "/openapi.json"


def test_redis_down_is_503_with_a_reason_and_creates_nothing(api, make_tenant, redis_server, cluster):
    t = make_tenant("pro")
    redis_server.down()
    try:
        ready = httpx.get(f"{api.url}/readyz", timeout=10)
        assert ready.status_code == 503
        assert ready.json()["checks"]["redis"].startswith("unavailable")
        assert "redis" in ready.json()["reason"] and ready.json()["checks"]["kubernetes"] == "ok"
        with t.client() as c:
            r = c.post("/v1/depth-batches", json=t.depth_spec())
            assert r.status_code == 503, r.text
            assert "Redis" in r.json()["error"]["message"] and r.headers["Retry-After"]
        assert cluster.list("depthbatches", t.namespace) == []
        assert httpx.get(f"{api.url}/health").status_code == 200  # alive, just not ready
    finally:
        redis_server.up()
    wait_until("ready again", lambda: httpx.get(f"{api.url}/readyz").status_code == 200, MEDIUM)
    with t.client() as c:  # data survived the restart (snapshot on shutdown)
        assert c.post("/v1/depth-batches", json=t.depth_spec()).status_code == 202


def test_json_log_lines_carry_the_request_id(api):
    import io
    import json

    from spatialforge.apiserver.core.logging import JsonFormatter

    stream = io.StringIO()
    handler = logging.StreamHandler(stream)
    handler.setFormatter(JsonFormatter())
    access = logging.getLogger("spatialforge.apiserver.access")
    access.addHandler(handler)
    try:
        httpx.get(f"{api.url}/v1/jobs", headers={"X-Request-ID": "json-line-1"})
    finally:
        access.removeHandler(handler)
    lines = [json.loads(line) for line in stream.getvalue().splitlines()]
    line = next(entry for entry in lines if entry["request_id"] == "json-line-1")
    assert line["level"] == "info" and "/v1/jobs 401" in line["msg"] and line["ts"].endswith("Z")


def test_kubernetes_down_is_503_refunded_per_ip_webhook_limit_cors(make_settings, make_tenant, cluster, tmp_path):
    import yaml

    from spatialforge.devcluster.ports import free_port
    from tests.apiserver.conftest import ServerThread

    t = make_tenant("pro")
    config = yaml.safe_load(cluster.kubeconfig.read_text())
    for entry in config["clusters"]:
        entry["cluster"]["server"] = f"https://127.0.0.1:{free_port()}"  # nothing listens there
    dead = tmp_path / "kubeconfig"
    dead.write_text(yaml.safe_dump(config))
    server = ServerThread(make_settings(kubeconfig=str(dead), stripe_webhook_per_ip_per_minute=2,
                                        cors_origins=["https://app.example"])).start(ready=False)
    try:
        pre = httpx.options(f"{server.url}/v1/jobs", headers={"Origin": "https://app.example",
                                                               "Access-Control-Request-Method": "GET"})
        assert pre.status_code == 200 and pre.headers["access-control-allow-origin"] == "https://app.example"
        other = httpx.options(f"{server.url}/v1/jobs", headers={"Origin": "https://evil.example",
                                                                 "Access-Control-Request-Method": "GET"})
        assert "access-control-allow-origin" not in other.headers
        ready = httpx.get(f"{server.url}/readyz", timeout=10)
        assert ready.status_code == 503 and ready.json()["checks"]["kubernetes"].startswith("unavailable")
        assert "kubernetes" in ready.json()["reason"] and ready.json()["checks"]["redis"] == "ok"
        with httpx.Client(base_url=server.url, headers=t.headers, timeout=30) as c:
            before = c.get("/v1/usage").json()["units_used"]
            r = c.post("/v1/depth-batches", json=t.depth_spec(3))
            assert r.status_code == 503, r.text
            assert r.json()["error"]["code"] == "unavailable" and r.headers["Retry-After"]
            assert c.get("/v1/usage").json()["units_used"] == before  # the charge was refunded
        assert cluster.list("depthbatches", t.namespace) == []

        codes = [httpx.post(f"{server.url}/v1/billing/webhooks", content=b"{}").status_code for _ in range(3)]
        assert codes[-1] == 429, codes
    finally:
        server.stop()
