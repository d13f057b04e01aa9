"""Stripe against stripe-mock: checkout and portal sessions; webhook events verified with the
stripe library and applied once; grace period; usage reported once per job across a restart."""

from __future__ import annotations

import hashlib
import hmac
import json
import time
import uuid

import httpx
import redis

from spatialforge.crds.constants import ANNOTATION_GPU_LIMIT
from tests.apiserver.conftest import STRIPE_WEBHOOK_SECRET, ServerThread, wait_until
from tests.timeouts import MEDIUM


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


def test_checkout_and_portal_sessions(make_tenant):
    t = make_tenant("free")
    with t.client() as c:
        r = c.post("/v1/billing/checkout", json={"plan": "pro"})
        assert r.status_code == 200, r.text
        assert r.json()["id"].startswith("cs_") and r.json()["url"].startswith("https://")
        r = c.post("/v1/billing/portal")
        assert r.status_code == 200, r.text
        assert r.json()["url"].startswith("https://")
        assert c.post("/v1/billing/checkout", json={"plan": "enterprise"}).status_code == 422


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
    assert _post(api, event, secret="whsec_" + "0" * 40).status_code == 400
    assert _post(api, event, ts=int(time.time()) - 3600).status_code == 400  # outside the tolerance
    assert httpx.post(f"{api.url}/v1/billing/webhooks", content=b"{}").status_code == 400
    assert _post(api, event).json()["result"] == "ignored"  # valid, but no tenant


def test_usage_reported_once_per_job_across_a_restart(api, make_tenant, make_settings):
    t = make_tenant("pro", seconds=1)
    customer = f"cus_{uuid.uuid4().hex[:14]}"
    _post(api, _event("checkout.session.completed", {
        "id": "cs_u", "object": "checkout.session", "client_reference_id": t.id, "customer": customer,
        "metadata": {"tenant": t.id, "plan": "pro"}}))
    rc = redis.Redis.from_url(make_settings().redis_url, decode_responses=True)
    with t.client() as c:
        job = c.post("/v1/depth-batches", json=t.depth_spec(placement={"gpus": 1})).json()
        wait_until("usage report", lambda: rc.llen(f"usage:reports:{t.id}") >= 1, MEDIUM)
        report = json.loads(rc.lindex(f"usage:reports:{t.id}", 0))
        uid = report["uid"]
        assert report["phase"] == "Succeeded" and report["gpu_seconds"] > 0 and report["stripe"] == uid
        usage = c.get("/v1/usage").json()
        assert usage["jobs"] == {"succeeded": 1} and usage["gpu_seconds"] == round(report["gpu_seconds"], 3)

    # A second front end (a restart) lists the finished job again and reports nothing new.
    second = ServerThread(make_settings()).start()
    try:
        def duplicate_seen() -> bool:
            text = httpx.get(f"{second.url}/metrics").text
            return 'sf_api_usage_reports_total{result="duplicate"}' in text
        wait_until("the restarted server to consider the job", duplicate_seen, MEDIUM)
        assert rc.llen(f"usage:reports:{t.id}") == 1
        with httpx.Client(base_url=second.url, headers=t.headers) as c:
            assert c.get("/v1/usage").json()["jobs"] == {"succeeded": 1}
            assert c.get(f"/v1/jobs/{job['id']}").json()["phase"] == "Succeeded"  # from its own cache
    finally:
        second.stop()
