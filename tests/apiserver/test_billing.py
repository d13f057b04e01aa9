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


def _downgrades(*servers: ServerThread) -> dict[str, float]:
    """sf_api_grace_downgrades_total by `via`, summed over the servers' /metrics."""
    out = {"sweep": 0.0, "request": 0.0}
    for server in servers:
        for line in httpx.get(f"{server.url}/metrics").text.splitlines():
            if line.startswith("sf_api_grace_downgrades_total{"):
                labels, value = line.rsplit(" ", 1)
                via = labels.split('via="', 1)[1].split('"', 1)[0]
                out[via] += float(value)
    return out


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
        time.sleep(0.5)  # further sweeps (two replicas, 0.1 s apart) must not degrade anyone again
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


def test_a_failed_gpu_limit_write_after_the_downgrade_is_retried_by_the_sweep(make_settings):
    """The plan moved to free but the namespace write failed (Kubernetes API down): the tenant
    is re-filed in grace:due with a marker, and the next sweep writes the limit once."""
    import asyncio

    import redis.asyncio as aioredis

    from spatialforge.apiserver.core.metrics import Metrics
    from spatialforge.apiserver.services import billing as billing_mod
    from spatialforge.apiserver.services.tenants import Tenants

    settings = make_settings(redis_url=make_settings().redis_url.rsplit("/", 1)[0] + "/3")
    calls: list[str] = []

    async def plan_changed(tenant: str) -> None:
        calls.append(tenant)
        if len(calls) == 1:
            raise OSError("Kubernetes API unreachable")

    async def go() -> None:
        r = aioredis.Redis.from_url(settings.redis_url, decode_responses=True)
        await r.flushdb()
        try:
            tenants = Tenants(r, settings.hmac_key())
            billing = billing_mod.Billing(settings, tenants, plan_changed, Metrics())
            sweeper = billing.grace_sweeper(0.1)
            await tenants.set_plan("acme", "pro")
            await tenants.set_fields("acme", grace_until=str(time.time() - 1))
            await r.zadd(billing_mod.GRACE_DUE, {"acme": time.time() - 1})
            assert await sweeper.sweep() == 0  # the write failed
            assert (await tenants.info("acme"))["plan"] == "free" and calls == ["acme"]
            assert await r.exists(billing_mod.grace_reapply_key("acme"))
            retry_at = await r.zscore(billing_mod.GRACE_DUE, "acme")
            assert time.time() < retry_at <= time.time() + billing_mod.GRACE_RETRY
            await r.zadd(billing_mod.GRACE_DUE, {"acme": time.time() - 1})  # as if the retry time had come
            await sweeper.sweep()
            assert calls == ["acme", "acme"]
            assert not await r.exists(billing_mod.grace_reapply_key("acme"))
            assert await r.zscore(billing_mod.GRACE_DUE, "acme") is None
            await sweeper.sweep()
            assert calls == ["acme", "acme"]  # nothing more to do
            assert billing.metrics.registry.get_sample_value("sf_api_grace_downgrades_total", {"via": "sweep"}) == 1
        finally:
            await r.flushdb()
            await r.aclose()

    asyncio.run(go())
