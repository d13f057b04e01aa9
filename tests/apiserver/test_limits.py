"""Plan restrictions (403), validation (422 naming the field), the quota race at the edge,
and the per-minute rate limit: 429 with Retry-After and X-RateLimit-*, nothing created."""

from __future__ import annotations

import asyncio
import time

import httpx
import redis

from spatialforge.apiserver.services.quotas import WINDOW, usage_key


def test_plan_restricts_model_sizes_presets_and_gpus(make_tenant, cluster):
    t = make_tenant("free")
    with t.client() as c:
        cases = [
            ("/v1/depth-batches", t.depth_spec(model={"size": "base"}), "model size 'base'"),
            ("/v1/reconstructions", t.recon_spec(quality="high"), "quality preset 'high'"),
            ("/v1/depth-batches", t.depth_spec(placement={"gpus": 2}), "GPUs exceed"),
            ("/v1/depth-batches", t.depth_spec(placement={"gpus": 0, "nodeSelector": {"a": "b"}}), "nodeSelector"),
        ]
        for path, spec, why in cases:
            r = c.post(path, json=spec)
            assert r.status_code == 403, r.text
            assert why in r.json()["error"]["message"]
        assert c.post("/v1/reconstructions", json=t.recon_spec(quality="standard")).status_code == 202
    assert len(cluster.list("reconstructionjobs", t.namespace)) == 1
    assert cluster.list("depthbatches", t.namespace) == []


def test_bad_fields_are_422_naming_them(make_tenant):
    t = make_tenant("pro")
    with t.client() as c:
        for spec, field in ((t.depth_spec(parallelism=0), "parallelism"), (t.depth_spec(bogus=1), "bogus"),
                            (t.depth_spec(inputs=["http://evil.example/x.jpg"]), "inputs.0"),
                            ({"output": {"uri": f"{t.prefix}r"}}, "inputs")):
            r = c.post("/v1/depth-batches", json=spec)
            assert r.status_code == 422, r.text
            assert field in [f["field"] for f in r.json()["error"]["fields"]], r.json()


def test_quota_edge_admits_exactly_the_remainder(make_tenant, cluster, make_settings):
    t = make_tenant("pro", seconds=30, monthly_units=100, rate_per_minute=1000)
    remainder = 7
    rc = redis.Redis.from_url(make_settings().redis_url, decode_responses=True)
    rc.hset(usage_key(t.id), "units", 100 - remainder)  # the month so far, as if 93 units were used

    async def burst() -> list[httpx.Response]:
        async with httpx.AsyncClient(base_url=t.api.url, headers=t.headers, timeout=60) as c:
            return await asyncio.gather(*(c.post("/v1/depth-batches", json=t.depth_spec()) for _ in range(50)))

    responses = asyncio.run(burst())
    codes = [r.status_code for r in responses]
    assert codes.count(202) == remainder and codes.count(429) == 50 - remainder, codes
    refused = next(r for r in responses if r.status_code == 429)
    assert refused.json()["error"]["code"] == "quota_exceeded"
    assert int(refused.headers["Retry-After"]) > 0
    # The month's own headers; X-RateLimit-* stays the per-minute limit (1000 here).
    assert refused.headers["X-Quota-Limit"] == "100" and refused.headers["X-Quota-Remaining"] == "0"
    assert int(refused.headers["X-Quota-Reset"]) == int(refused.headers["Retry-After"])
    assert refused.headers.get("X-RateLimit-Limit", "1000") == "1000"
    assert len(cluster.list("depthbatches", t.namespace)) == remainder  # refused requests created nothing
    assert rc.hget(usage_key(t.id), "units") == "100"
    with t.client() as c:
        assert c.get("/v1/usage").json()["units_used"] == 100


def fresh_window(need: float) -> None:
    """Return when at least `need` seconds are left in the current per-minute window (the
    server counts in `epoch // WINDOW` on this machine's clock), so a burst stays in one."""
    left = WINDOW - time.time() % WINDOW
    if left < need:
        time.sleep(left + 0.05)


def test_rate_limit_per_minute(make_tenant):
    t = make_tenant("pro", rate_per_minute=5)
    with t.client() as c:
        fresh_window(20)
        answers = [c.get("/v1/jobs") for _ in range(8)]
        assert [r.status_code for r in answers] == [200] * 5 + [429] * 3, [r.text for r in answers]
        assert [r.headers["X-RateLimit-Remaining"] for r in answers[:5]] == ["4", "3", "2", "1", "0"]
        assert {r.headers["X-RateLimit-Limit"] for r in answers} == {"5"}
        r = c.get("/v1/jobs")
        assert r.status_code == 429
        assert r.json()["error"]["code"] == "rate_limited"
        assert 0 < int(r.headers["Retry-After"]) <= 60 and r.headers["X-RateLimit-Remaining"] == "0"
        assert c.post("/v1/depth-batches", json=t.depth_spec()).status_code == 429


def test_rate_falls_to_the_free_plan_when_payment_grace_ran_out(make_tenant, make_settings):
    """The per-minute rate is decided in Redis with the key lookup: a pro tenant whose grace
    period is over is rated as free (60/min) even before anything rewrites its plan."""
    import time

    import redis

    t = make_tenant("pro")
    rc = redis.Redis.from_url(make_settings().redis_url, decode_responses=True)
    with t.client() as c:
        assert c.get("/v1/jobs").headers["X-RateLimit-Limit"] == "1200"
        rc.hset(f"tenant:{t.id}", "grace_until", str(time.time() - 1))
        assert c.get("/v1/jobs").headers["X-RateLimit-Limit"] == "60"
