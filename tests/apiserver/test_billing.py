"""Stripe against stripe-mock: what checkout, portal and meter-event calls send (recorded in
front of stripe-mock); webhook events verified first, applied once, and refused with 400 when a
signed event has the wrong shape; unsigned calls limited per address without ever holding off a
signed event; grace period; usage reported once per job across a restart."""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import json
import math
import threading
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import parse_qsl

import httpx
import pytest
import redis
import redis.asyncio as aioredis

from spatialforge.crds.constants import ANNOTATION_GPU_LIMIT
from tests.apiserver.conftest import STRIPE_WEBHOOK_SECRET, ServerThread, wait_until
from tests.timeouts import MEDIUM, SHORT


def _signed(event: dict, secret: str = STRIPE_WEBHOOK_SECRET, ts: int | None = None) -> tuple[bytes, dict]:
    payload = json.dumps(event).encode()
    ts = ts or int(time.time())
    sig = hmac.new(secret.encode(), f"{ts}.".encode() + payload, hashlib.sha256).hexdigest()
    return payload, {"Stripe-Signature": f"t={ts},v1={sig}", "Content-Type": "application/json"}


def _event(kind: str, obj: dict) -> dict:
    return {"id": f"evt_{uuid.uuid4().hex[:16]}", "object": "event", "type": kind, "api_version": "2024-06-20",
            "created": int(time.time()), "livemode": False, "data": {"object": obj}}


def _post(api, event: dict, **kw) -> httpx.Response:
    payload, headers = _signed(event, **kw)
    return httpx.post(f"{api.url}/v1/billing/webhooks", content=payload, headers=headers)


def _plan(t) -> dict:
    with t.client() as c:
        return c.get("/v1/plan").json()


def _metric(server: ServerThread, name: str, labels: dict[str, str]) -> float:
    return server.app.state.metrics.registry.get_sample_value(name, labels) or 0.0


@dataclass
class Sent:
    method: str
    path: str
    form: dict[str, str]
    headers: dict[str, str]


class StripeRecorder:
    """A recording reverse proxy in front of stripe-mock: every call the front end makes is
    forwarded unchanged, and what was sent (path, form fields, headers) is kept."""

    def __init__(self, upstream: str) -> None:
        self.sent: list[Sent] = []
        outer = self

        class Handler(BaseHTTPRequestHandler):
            def _forward(self) -> None:
                body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
                headers = {k: v for k, v in self.headers.items() if k.lower() not in ("host", "content-length")}
                outer.sent.append(Sent(self.command, self.path, dict(parse_qsl(body.decode())),
                                       {k.lower(): v for k, v in headers.items()}))
                r = httpx.request(self.command, upstream + self.path, content=body, headers=headers, timeout=30)
                self.send_response(r.status_code)
                for k, v in r.headers.items():
                    if k.lower() not in ("content-length", "transfer-encoding", "connection", "content-encoding"):
                        self.send_header(k, v)
                self.send_header("Content-Length", str(len(r.content)))
                self.end_headers()
                self.wfile.write(r.content)

            do_GET = do_POST = do_DELETE = _forward  # noqa: N815

            def log_message(self, *args: object) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_port}"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def calls(self, path: str) -> list[Sent]:
        return [c for c in self.sent if c.path.split("?")[0] == path]

    def close(self) -> None:
        self.server.shutdown()


@dataclass
class Recorded:
    """A front end whose Stripe calls go through the recorder, on its own Redis database (so
    the session's front end, which sees the same jobs end, reports nothing to Stripe for them)."""

    api: ServerThread
    stripe: StripeRecorder
    redis: redis.Redis

    def tenant(self, plan: str, behaviour: Any, **fields: str) -> tuple[str, dict[str, str]]:
        tenant = f"t{uuid.uuid4().hex[:10]}"

        async def go() -> str:
            from spatialforge.apiserver.services.tenants import Tenants

            r = aioredis.Redis.from_url(self.api.app.state.settings.redis_url, decode_responses=True)
            try:
                tenants = Tenants(r, self.api.app.state.settings.hmac_key())
                key = (await tenants.create_key(tenant)).key
                await tenants.set_plan(tenant, plan)
                if fields:
                    await tenants.set_fields(tenant, **fields)
                return key
            finally:
                await r.aclose()

        key = asyncio.run(go())
        behaviour.set(f"sf-{tenant}", seconds=1)
        return tenant, {"X-API-Key": key}


@pytest.fixture
def recorded(make_settings, stripe_mock, cluster) -> Iterator[Recorded]:
    recorder = StripeRecorder(stripe_mock.env["SPATIALFORGE_API_STRIPE_API_BASE"])
    url = make_settings().redis_url.rsplit("/", 1)[0] + "/4"
    rc = redis.Redis.from_url(url, decode_responses=True)
    rc.flushdb()
    server = ServerThread(make_settings(redis_url=url, stripe_api_base=recorder.url)).start()
    made = Recorded(server, recorder, rc)
    try:
        yield made
    finally:
        server.stop()
        recorder.close()
        tenants = [t for t in rc.smembers("tenants")]
        if tenants:
            cluster.kubectl("delete", "namespace", *(f"sf-{t}" for t in tenants), "--wait=false", check=False)
        rc.flushdb()


def test_checkout_and_portal_send_the_price_customer_and_tenant(recorded, behaviour):
    tenant, headers = recorded.tenant("free", behaviour)
    settings = recorded.api.app.state.settings
    with httpx.Client(base_url=recorded.api.url, headers=headers, timeout=30) as c:
        r = c.post("/v1/billing/checkout", json={"plan": "pro"})
        assert r.status_code == 200, r.text
        assert r.json()["id"].startswith("cs_") and r.json()["url"].startswith("https://")
        (created,) = recorded.stripe.calls("/v1/customers")
        assert created.form == {"metadata[tenant]": tenant}
        assert created.headers["idempotency-key"] == f"customer-{tenant}"
        customer = recorded.redis.hget(f"tenant:{tenant}", "stripe_customer")
        assert customer and recorded.redis.get(f"stripe:customer:{customer}") == tenant
        (session,) = recorded.stripe.calls("/v1/checkout/sessions")
        assert session.form["line_items[0][price]"] == settings.stripe_prices["pro"] == "price_pro_monthly"
        assert session.form["line_items[0][quantity]"] == "1" and session.form["mode"] == "subscription"
        assert session.form["customer"] == customer and session.form["client_reference_id"] == tenant
        assert session.form["metadata[tenant]"] == tenant and session.form["metadata[plan]"] == "pro"
        assert session.form["success_url"].startswith(settings.public_url)

        r = c.post("/v1/billing/portal")
        assert r.status_code == 200 and r.json()["url"].startswith("https://"), r.text
        (portal,) = recorded.stripe.calls("/v1/billing_portal/sessions")
        assert portal.form == {"customer": customer, "return_url": settings.public_url}
        assert len(recorded.stripe.calls("/v1/customers")) == 1  # the customer is reused

        r = c.post("/v1/billing/checkout", json={"plan": "enterprise"})  # sold by contract, not checkout
        assert r.status_code == 422 and [f["field"] for f in r.json()["error"]["fields"]] == ["plan"], r.text
        assert len(recorded.stripe.calls("/v1/checkout/sessions")) == 1  # nothing sent for it


def test_webhook_events_move_the_plan_once(api, admin, make_tenant, cluster):
    t = make_tenant("free")
    customer = f"cus_{uuid.uuid4().hex[:14]}"
    completed = _event("checkout.session.completed", {
        "id": "cs_test_1", "object": "checkout.session", "client_reference_id": t.id, "customer": customer,
        "subscription": "sub_1", "metadata": {"tenant": t.id, "plan": "pro"}})
    r = _post(api, completed)
    assert r.status_code == 200 and r.json()["result"] == "handled", r.text
    assert _plan(t)["plan"] == "pro"
    ns = cluster.get("namespace", t.namespace, "")
    assert ns["metadata"]["annotations"][ANNOTATION_GPU_LIMIT] == "16"

    # A redelivered event is remembered and not applied again (an admin change in between stays).
    assert admin.put(f"/v1/admin/tenants/{t.id}/plan", json={"plan": "enterprise"}).status_code == 200
    r = _post(api, completed)
    assert r.json()["result"] == "duplicate"
    assert _plan(t)["plan"] == "enterprise"

    updated = _event("customer.subscription.updated", {
        "id": "sub_1", "object": "subscription", "customer": customer, "status": "active",
        "items": {"object": "list", "data": [{"id": "si_1", "price": {"id": "price_builder_monthly"}}]}})
    assert _post(api, updated).json()["result"] == "handled"
    assert _plan(t)["plan"] == "builder"
    assert cluster.get("namespace", t.namespace, "")["metadata"]["annotations"][ANNOTATION_GPU_LIMIT] == "4"

    failed = _event("invoice.payment_failed", {"id": "in_1", "object": "invoice", "customer": customer})
    assert _post(api, failed).json()["result"] == "handled"
    plan = _plan(t)
    assert plan["plan"] == "builder" and plan["grace_until"] > time.time() + 6 * 86400  # not degraded at once

    paid = _event("invoice.paid", {"id": "in_2", "object": "invoice", "customer": customer})
    assert _post(api, paid).json()["result"] == "handled"
    assert _plan(t)["grace_until"] is None

    deleted = _event("customer.subscription.deleted", {"id": "sub_1", "object": "subscription", "customer": customer,
                                                       "status": "canceled"})
    assert _post(api, deleted).json()["result"] == "handled"
    assert _plan(t)["plan"] == "free"
    assert cluster.get("namespace", t.namespace, "")["metadata"]["annotations"][ANNOTATION_GPU_LIMIT] == "1"


def test_payment_failure_degrades_after_the_grace_period(api, make_tenant, make_settings, cluster):
    t = make_tenant("pro")
    customer = f"cus_{uuid.uuid4().hex[:14]}"
    rc = redis.Redis.from_url(make_settings().redis_url, decode_responses=True)
    rc.set(f"stripe:customer:{customer}", t.id)
    assert _post(api, _event("invoice.payment_failed", {"id": "in_9", "object": "invoice",
                                                         "customer": customer})).json()["result"] == "handled"
    assert _plan(t)["plan"] == "pro"
    rc.hset(f"tenant:{t.id}", "grace_until", str(time.time() - 1))  # the grace period has run out
    assert _plan(t)["plan"] == "free"
    assert cluster.get("namespace", t.namespace, "")["metadata"]["annotations"][ANNOTATION_GPU_LIMIT] == "1"
    with t.client() as c:
        assert c.post("/v1/depth-batches", json=t.depth_spec(model={"size": "large"})).status_code == 403


def test_webhook_signature_is_verified(api):
    event = _event("invoice.paid", {"id": "in_x", "object": "invoice", "customer": "cus_nobody"})
    for r in (_post(api, event, secret="whsec_" + "0" * 40), _post(api, event, ts=int(time.time()) - 3600),
              httpx.post(f"{api.url}/v1/billing/webhooks", content=b"{}")):  # wrong secret, too old, unsigned
        assert r.status_code == 400 and r.json()["error"]["code"] == "bad_signature", r.text
    assert _post(api, event).json()["result"] == "ignored"  # valid, but no tenant


def _signed_raw(payload: bytes) -> dict[str, str]:
    ts = int(time.time())
    sig = hmac.new(STRIPE_WEBHOOK_SECRET.encode(), f"{ts}.".encode() + payload, hashlib.sha256).hexdigest()
    return {"Stripe-Signature": f"t={ts},v1={sig}", "Content-Type": "application/json"}


def _evt(kind: str = "checkout.session.completed", **event: Any) -> bytes:
    return json.dumps({"id": f"evt_{uuid.uuid4().hex[:16]}", "object": "event", "type": kind, **event}).encode()


BAD_EVENTS = {
    "list": (b"[]", "not a Stripe event"),
    "empty object": (b"{}", "id"),
    "null": (b"null", "not a Stripe event"),
    "number": (b"42", "not a Stripe event"),
    "string": (b'"evt"', "not a Stripe event"),
    "no data": (_evt(), "data"),
    "data a list": (_evt(data=[]), "data"),
    "data.object a string": (_evt(data={"object": "cs_1"}), "data.object"),
    "data.object missing": (_evt(data={}), "data.object"),
    "metadata a list": (_evt(data={"object": {"metadata": ["tenant"]}}), "metadata"),
    "metadata value a number": (_evt(data={"object": {"metadata": {"tenant": 7}}}), "metadata"),
    "customer a number": (_evt("invoice.paid", data={"object": {"customer": 12}}), "customer"),
    "items a string": (_evt("customer.subscription.updated", data={"object": {"customer": "cus_1", "items": "x"}}),
                       "items"),
    "tenant id with ../": (_evt(data={"object": {"metadata": {"tenant": "../../etc", "plan": "pro"}}}),
                           "not a tenant id"),
    "client_reference_id with ../": (_evt(data={"object": {"client_reference_id": "acme/../x"}}), "not a tenant id"),
    "unknown plan": (_evt(data={"object": {"client_reference_id": "acme", "metadata": {"plan": "platinum"}}}),
                     "not a plan"),
}


@pytest.mark.parametrize("name", list(BAD_EVENTS))
def test_signed_events_of_the_wrong_shape_are_400(api, make_settings, name):
    payload, reason = BAD_EVENTS[name]
    r = httpx.post(f"{api.url}/v1/billing/webhooks", content=payload, headers=_signed_raw(payload))
    assert r.status_code == 400, r.text
    err = r.json()["error"]
    assert err["code"] == "bad_event" and reason in err["message"], err
    # Nothing was claimed: Stripe may send a corrected event with the same id.
    rc = redis.Redis.from_url(make_settings().redis_url, decode_responses=True)
    try:
        event_id = json.loads(payload)["id"]
    except (TypeError, KeyError, ValueError):
        return
    assert rc.get(f"stripe:event:{event_id}") is None


def test_a_signed_event_of_an_unhandled_type_is_ignored_whatever_its_object(api):
    payload = _evt("charge.refunded", data={"object": {"metadata": ["not", "a", "dict"], "customer": 5}})
    r = httpx.post(f"{api.url}/v1/billing/webhooks", content=payload, headers=_signed_raw(payload))
    assert r.status_code == 200 and r.json()["result"] == "ignored", r.text


def test_unsigned_calls_are_limited_per_address_but_never_a_signed_event(make_settings, make_tenant):
    """Junk from one address (behind a trusted ingress every caller would otherwise share one)
    gets 429 after the limit; a correctly signed event from the same address is still applied."""
    server = ServerThread(make_settings(trusted_proxies=["127.0.0.1"], stripe_webhook_per_ip_per_minute=3)).start()
    try:
        t = make_tenant("free")
        address = f"2001:db8::{uuid.uuid4().hex[:4]}"
        url, forwarded = f"{server.url}/v1/billing/webhooks", {"X-Forwarded-For": address}
        codes = [httpx.post(url, content=b'{"junk": true}', headers=forwarded).status_code for _ in range(6)]
        assert codes == [400, 400, 400, 429, 429, 429], codes
        refused = httpx.post(url, content=b"{}", headers={**forwarded, "Stripe-Signature": "t=1,v1=00"})
        assert refused.status_code == 429 and int(refused.headers["Retry-After"]) > 0
        assert refused.json()["error"]["code"] == "rate_limited"
        # A signed event from that same address: applied.
        event = _event("checkout.session.completed", {"id": "cs_l", "object": "checkout.session",
                                                      "client_reference_id": t.id,
                                                      "metadata": {"tenant": t.id, "plan": "builder"}})
        payload, headers = _signed(event)
        r = httpx.post(url, content=payload, headers={**headers, **forwarded})
        assert r.status_code == 200 and r.json()["result"] == "handled", r.text
        assert _plan(t)["plan"] == "builder"
        # Another address is not limited by the first one's junk.
        other = {"X-Forwarded-For": f"2001:db8::{uuid.uuid4().hex[:4]}"}
        assert httpx.post(url, content=b"{}", headers=other).status_code == 400
    finally:
        server.stop()


def test_usage_reported_once_per_job_across_a_restart(recorded, behaviour):
    customer = f"cus_{uuid.uuid4().hex[:14]}"
    tenant, headers = recorded.tenant("pro", behaviour, stripe_customer=customer)
    rc = recorded.redis
    with httpx.Client(base_url=recorded.api.url, headers=headers, timeout=30) as c:
        spec = {"inputs": [f"s3://sf-api-tests/tenants/{tenant}/inputs/a.jpg"],
                "output": {"uri": f"s3://sf-api-tests/tenants/{tenant}/results"}, "placement": {"gpus": 1}}
        job = c.post("/v1/depth-batches", json=spec)
        assert job.status_code == 202, job.text
        wait_until("usage report", lambda: rc.llen(f"usage:reports:{tenant}") >= 1, MEDIUM)
        report = json.loads(rc.lindex(f"usage:reports:{tenant}", 0))
        uid = report["uid"]
        assert report["phase"] == "Succeeded" and report["gpu_seconds"] > 0 and report["stripe"] == uid
        usage = c.get("/v1/usage").json()
        assert usage["jobs"] == {"succeeded": 1} and usage["gpu_seconds"] == round(report["gpu_seconds"], 3)
    # What Stripe was sent: one meter event whose identifier is the resource uid.
    (sent,) = recorded.stripe.calls("/v1/billing/meter_events")
    assert sent.form["identifier"] == uid
    assert sent.form["event_name"] == recorded.api.app.state.settings.stripe_meter_event
    assert sent.form["payload[stripe_customer_id]"] == customer
    assert sent.form["payload[value]"] == str(math.ceil(report["gpu_seconds"]))

    # A second front end (a restart) lists the finished job again and reports nothing new.
    second = ServerThread(recorded.api.app.state.settings).start()
    try:
        wait_until("the restarted server to consider the job",
                   lambda: _metric(second, "sf_api_usage_reports_total", {"result": "duplicate"}) >= 1, MEDIUM)
        assert rc.llen(f"usage:reports:{tenant}") == 1
        assert len(recorded.stripe.calls("/v1/billing/meter_events")) == 1
        with httpx.Client(base_url=second.url, headers=headers) as c:
            assert c.get("/v1/usage").json()["jobs"] == {"succeeded": 1}
            assert c.get(f"/v1/jobs/{job.json()['id']}").json()["phase"] == "Succeeded"  # from its own cache
    finally:
        second.stop()


def _downgrades(*servers: ServerThread) -> dict[str, float]:
    """sf_api_grace_downgrades_total by `via`, summed over the servers."""
    return {via: sum(_metric(s, "sf_api_grace_downgrades_total", {"via": via}) for s in servers)
            for via in ("sweep", "request")}


def test_grace_expiry_degrades_without_a_request(api, make_tenant, make_settings, cluster):
    """Two more front ends sweep every 0.1 s; three tenants whose 2 s grace runs out are degraded
    (plan free, namespace GPU limit 1) exactly once each, by a sweep, with no request of theirs.
    A tenant whose grace has not run out keeps its plan and limit."""
    settings = make_settings(payment_grace_seconds=2, grace_sweep_seconds=0.1)
    replicas = [ServerThread(settings).start(), ServerThread(settings).start()]
    rc = redis.Redis.from_url(settings.redis_url, decode_responses=True)
    try:
        expiring = [make_tenant("pro") for _ in range(3)]
        keeps = make_tenant("pro")
        for t in [*expiring, keeps]:
            wait_until("the pro GPU limit", lambda: cluster.get("namespace", t.namespace, "")["metadata"]
                       .get("annotations", {}).get(ANNOTATION_GPU_LIMIT) == "16")
            rc.set(f"stripe:customer:cus_{t.id}", t.id)
        before = _downgrades(api, *replicas)
        for t in expiring:  # grace of 2 s (the replicas' setting)
            failed = _event("invoice.payment_failed", {"id": "in_g", "object": "invoice", "customer": f"cus_{t.id}"})
            assert _post(replicas[0], failed).json()["result"] == "handled"
            assert rc.hget(f"tenant:{t.id}", "plan") == "pro"
        failed = _event("invoice.payment_failed", {"id": "in_k", "object": "invoice", "customer": f"cus_{keeps.id}"})
        assert _post(api, failed).json()["result"] == "handled"  # grace of 7 days
        for t in expiring:
            assert rc.zscore("grace:due", t.id) == float(rc.hget(f"tenant:{t.id}", "grace_until"))

        for t in expiring:  # no request of the tenant's in between
            wait_until(f"{t.id}'s namespace GPU limit to drop", lambda: cluster.get("namespace", t.namespace, "")
                       ["metadata"]["annotations"][ANNOTATION_GPU_LIMIT] == "1", SHORT)
            assert rc.hget(f"tenant:{t.id}", "plan") == "free"
            assert rc.hget(f"tenant:{t.id}", "grace_until") is None
            assert rc.zscore("grace:due", t.id) is None
        # Further sweeps must not degrade anyone again: three more on each replica, counted.
        swept = [_metric(s, "sf_api_grace_sweeps_total", {}) for s in replicas]
        wait_until("three more sweeps on each replica", lambda: all(
            _metric(s, "sf_api_grace_sweeps_total", {}) >= n + 3 for s, n in zip(replicas, swept, strict=True)), SHORT)
        after = _downgrades(api, *replicas)
        assert after["sweep"] - before["sweep"] == len(expiring)
        assert after["request"] == before["request"]

        assert rc.hget(f"tenant:{keeps.id}", "plan") == "pro"
        assert cluster.get("namespace", keeps.namespace, "")["metadata"]["annotations"][ANNOTATION_GPU_LIMIT] == "16"
        assert rc.zscore("grace:due", keeps.id) > time.time() + 6 * 86400
        assert _plan(expiring[0])["plan"] == "free"
    finally:
        for server in replicas:
            server.stop()


def test_a_failed_gpu_limit_write_after_the_downgrade_is_retried_by_the_sweep(make_settings, cluster, tmp_path):
    """The plan moved to free but the namespace write failed (the Kubernetes API unreachable): the
    tenant is re-filed in grace:due with a marker, and once the API is back the next sweep writes
    the limit, read back from the real namespace annotation."""
    import yaml

    from spatialforge.apiserver.core.metrics import Metrics
    from spatialforge.apiserver.services import billing as billing_mod
    from spatialforge.apiserver.services.kube import Kube, make_api_client
    from spatialforge.apiserver.services.namespaces import Namespaces
    from spatialforge.apiserver.services.tenants import Tenants
    from spatialforge.devcluster.ports import free_port

    settings = make_settings(redis_url=make_settings().redis_url.rsplit("/", 1)[0] + "/3")
    tenant = f"t{uuid.uuid4().hex[:10]}"
    namespace = f"{settings.namespace_prefix}{tenant}"
    config = yaml.safe_load(cluster.kubeconfig.read_text())
    for entry in config["clusters"]:
        entry["cluster"]["server"] = f"https://127.0.0.1:{free_port()}"  # nothing listens there
    dead = tmp_path / "kubeconfig"
    dead.write_text(yaml.safe_dump(config))

    def annotation() -> str:
        return cluster.get("namespace", namespace, "")["metadata"]["annotations"][ANNOTATION_GPU_LIMIT]

    async def go() -> None:
        r = aioredis.Redis.from_url(settings.redis_url, decode_responses=True)
        await r.flushdb()
        live_api, dead_api = await make_api_client(settings.kubeconfig), await make_api_client(str(dead))
        try:
            tenants = Tenants(r, settings.hmac_key())
            live = Namespaces(Kube(live_api), tenants, settings.namespace_prefix)
            await tenants.set_plan(tenant, "pro")
            await live.apply_plan(tenant)
            assert annotation() == "16"
            billing = billing_mod.Billing(settings, redis=r, tenants=tenants, metrics=Metrics(),
                                          namespaces=Namespaces(Kube(dead_api), tenants, settings.namespace_prefix))
            sweeper = billing.grace_sweeper(0.1)
            await tenants.set_fields(tenant, grace_until=str(time.time() - 1))
            await r.zadd(billing_mod.GRACE_DUE, {tenant: time.time() - 1})
            assert await sweeper.sweep() == 0  # the write failed
            assert (await tenants.info(tenant))["plan"] == "free" and annotation() == "16"
            assert await r.exists(billing_mod.grace_reapply_key(tenant))
            retry_at = await r.zscore(billing_mod.GRACE_DUE, tenant)
            assert time.time() < retry_at <= time.time() + billing_mod.GRACE_RETRY
            billing.namespaces = live  # the Kubernetes API is reachable again
            await r.zadd(billing_mod.GRACE_DUE, {tenant: time.time() - 1})  # as if the retry time had come
            await sweeper.sweep()
            assert annotation() == "1"
            assert not await r.exists(billing_mod.grace_reapply_key(tenant))
            assert await r.zscore(billing_mod.GRACE_DUE, tenant) is None
            assert await sweeper.sweep() == 0  # nothing more to do
            assert billing.metrics.registry.get_sample_value("sf_api_grace_downgrades_total", {"via": "sweep"}) == 1
            await billing.close()
        finally:
            await r.flushdb()
            await r.aclose()
            await live_api.close()
            await dead_api.close()

    try:
        asyncio.run(go())
    finally:
        cluster.kubectl("delete", "namespace", namespace, "--wait=false", check=False)
