"""What a submission is refused for, and what it is charged: the licence gate, oversized specs,
placement fields, output prefixes, concurrent jobs, month-quota headers, expired idempotency
records, refunds of jobs that never ran, and usage of Failed and Cancelled jobs.

Everything runs on the real stack: Redis, MinIO, stripe-mock, the plane with the operator and
node agent. A second front end with its own settings (research mode, larger bodies) shares
the session's Redis, bucket and plane.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterator

import httpx
import pytest
import redis

from tests.apiserver.conftest import ServerThread, wait_until
from tests.timeouts import MEDIUM


@pytest.fixture(scope="module")
def research_api(make_settings, operator) -> Iterator[ServerThread]:
    """A front end of a deployment that enables research mode and takes 32 MiB bodies."""
    server = ServerThread(make_settings(research_mode=True, max_body_bytes=32 * 1024 * 1024)).start()
    yield server
    server.stop()


def _record(tenant: str, key: str) -> str:
    """The Redis key of an Idempotency-Key's record (services/jobs.py)."""
    digest = hashlib.sha256((tenant + "\0" + key).encode()).hexdigest()
    return f"idem:{tenant}:{digest}"


def _rc(make_settings) -> redis.Redis:
    return redis.Redis.from_url(make_settings().redis_url, decode_responses=True)


def _wait_phase(c: httpx.Client, job_id: str, phase: str) -> dict:
    def probe():
        job = c.get(f"/v1/jobs/{job_id}").json()
        return job if job.get("phase") == phase else None
    return wait_until(f"job {job_id} {phase}", probe, MEDIUM)


def test_non_commercial_models_are_refused_unless_research_mode(make_tenant, cluster, research_api):
    t = make_tenant("pro")
    for size in ("base", "large"):
        with t.client() as c:
            r = c.post("/v1/depth-batches", json=t.depth_spec(model={"size": size}))
            assert r.status_code == 403, r.text
            err = r.json()["error"]
            assert err["code"] == "licence_non_commercial"
            assert "CC-BY-NC-4.0" in err["message"] and "research mode" in err["message"] and size in err["message"]
            r = c.post("/v1/reconstructions", json=t.recon_spec(model={"size": size, "variant": "metric-indoor"}))
            assert r.status_code == 403 and r.json()["error"]["code"] == "licence_non_commercial", r.text
            assert c.get("/v1/usage").json()["units_used"] == 0  # refused before any charge
    assert cluster.list("depthbatches", t.namespace) == [] and cluster.list("reconstructionjobs", t.namespace) == []
    # The same tenant, on a deployment with research mode on: accepted and charged.
    with httpx.Client(base_url=research_api.url, headers=t.headers, timeout=30) as c:
        r = c.post("/v1/depth-batches", json=t.depth_spec(model={"size": "large"}))
        assert r.status_code == 202, r.text
        assert c.get("/v1/usage").json()["units_used"] == 1
    # 'small' (Apache-2.0) needs no research mode.
    with t.client() as c:
        assert c.post("/v1/depth-batches", json=t.depth_spec(model={"size": "small"})).status_code == 202


def test_oversized_spec_is_422_naming_the_limit_before_any_charge(make_tenant, cluster, research_api):
    """10,000 long URIs (about 10 MB): the Kubernetes API would refuse the object (etcd keeps
    1.5 MiB); the front end refuses it first, naming the limit, and charges nothing."""
    t = make_tenant("enterprise")
    long = "d" * 900
    spec = t.depth_spec(inputs=[f"{t.prefix}inputs/{long}/img-{i:05d}.jpg" for i in range(10_000)])
    with httpx.Client(base_url=research_api.url, headers=t.headers, timeout=120) as c:
        r = c.post("/v1/depth-batches", json=spec)
        assert r.status_code == 422, r.text[:500]
        err = r.json()["error"]
        assert err["code"] == "spec_too_large" and err["limit_bytes"] == 1024 * 1024
        assert "1,048,576 bytes" in err["message"] and err["size_bytes"] > err["limit_bytes"]
        assert c.get("/v1/usage").json()["units_used"] == 0
        # Just under the limit is accepted (the CRD stores it).
        fits = t.depth_spec(inputs=[f"{t.prefix}inputs/{long}/img-{i:05d}.jpg" for i in range(1_000)])
        assert c.post("/v1/depth-batches", json=fits).status_code == 202
        assert c.get("/v1/usage").json()["units_used"] == 1_000
    assert len(cluster.list("depthbatches", t.namespace)) == 1


def test_a_uri_over_1024_characters_is_422_naming_the_field(make_tenant):
    t = make_tenant("pro")
    with t.client() as c:
        r = c.post("/v1/depth-batches", json=t.depth_spec(inputs=[f"{t.prefix}inputs/{'x' * 1100}.jpg"]))
        assert r.status_code == 422, r.text
        assert "inputs.0" in [f["field"] for f in r.json()["error"]["fields"]]
        r = c.post("/v1/depth-batches", json=t.depth_spec(output={"uri": f"{t.prefix}{'y' * 1100}"}))
        assert r.status_code == 422 and "output.uri" in [f["field"] for f in r.json()["error"]["fields"]]


def test_placement_fields_and_queue_name_are_refused_from_tenants(make_tenant, cluster):
    """A queueName would hand the Job to Kueue and bypass the operator's GPU admission: quota."""
    t = make_tenant("pro")
    cases = [({"queueName": "gpu-queue"}, "queueName"),
             ({"placement": {"gpus": 0, "tolerations": [{"key": "gpu", "operator": "Exists"}]}}, "placement.tolerations"),
             ({"placement": {"gpus": 0, "priorityClassName": "system-cluster-critical"}}, "placement.priorityClassName")]
    with t.client() as c:
        for extra, field in cases:
            for path, spec in (("/v1/depth-batches", t.depth_spec(**extra)), ("/v1/reconstructions", t.recon_spec(**extra))):
                r = c.post(path, json=spec)
                assert r.status_code == 403, (field, r.text)
                err = r.json()["error"]
                assert err["code"] == "placement_forbidden" and err["fields"] == [field], err
                assert err["message"].startswith(f"{field}: ")
        assert c.get("/v1/usage").json()["units_used"] == 0
    assert cluster.list("depthbatches", t.namespace) == [] and cluster.list("reconstructionjobs", t.namespace) == []


def test_output_uri_must_stay_in_the_tenant_prefix(make_tenant, cluster, api):
    a, b = make_tenant("pro"), make_tenant("pro")
    with a.client() as c:
        r = c.post("/v1/depth-batches", json=a.depth_spec(output={"uri": f"{b.prefix}results"}))
        assert r.status_code == 403 and r.json()["error"]["code"] == "outside_tenant_prefix", r.text
        assert "output.uri" in r.json()["error"]["message"]
        r = c.post("/v1/reconstructions", json=a.recon_spec(output={"uri": "s3://another-bucket/results"}))
        assert r.status_code == 403 and r.json()["error"]["code"] == "outside_tenant_prefix", r.text
        # `..` climbing out of the prefix: refused by the spec's URI rule, naming the field.
        for uri in (f"{a.prefix}../{b.id}/results", f"{a.prefix}results/../../{b.id}"):
            r = c.post("/v1/depth-batches", json=a.depth_spec(output={"uri": uri}))
            assert r.status_code == 422, r.text
            assert "output.uri" in [f["field"] for f in r.json()["error"]["fields"]]
        assert c.get("/v1/usage").json()["units_used"] == 0
    assert cluster.list("depthbatches", a.namespace) == []
    # The front end's own prefix check refuses them too (a second line behind the spec's rule).
    storage = api.services.storage
    assert storage.owns(a.id, f"{a.prefix}results/run-1")
    for uri in (f"{a.prefix}../{b.id}/results", f"{a.prefix}results/../../{b.id}", f"{a.prefix}x/..",
                f"{a.prefix}./../{b.id}", f"{b.prefix}results", f"s3://other/tenants/{a.id}/results"):
        assert not storage.owns(a.id, uri), uri


def test_concurrent_job_limit_applies_to_cpu_jobs(make_tenant):
    """`placement.gpus: 0` is not free: the plan's concurrent jobs bound it."""
    t = make_tenant("pro", seconds=600, concurrent_jobs=2)
    with t.client() as c:
        assert c.get("/v1/plan").json()["concurrent_jobs"] == 2
        first, second = (c.post("/v1/depth-batches", json=t.depth_spec()).json() for _ in range(2))
        r = c.post("/v1/depth-batches", json=t.depth_spec())
        assert r.status_code == 429, r.text
        assert r.json()["error"]["code"] == "concurrent_jobs_limit" and r.json()["error"]["limit"] == 2
        assert r.headers["X-Concurrent-Jobs-Limit"] == "2"
        assert c.get("/v1/usage").json()["units_used"] == 2  # the refusal charged nothing
        assert c.delete(f"/v1/jobs/{first['id']}").status_code == 202  # a finished job frees its slot
        assert c.post("/v1/depth-batches", json=t.depth_spec()).status_code == 202
        assert c.post("/v1/reconstructions", json=t.recon_spec()).status_code == 429
        assert c.delete(f"/v1/jobs/{second['id']}").status_code == 202


def test_month_quota_has_its_own_headers_and_code(make_tenant, make_settings):
    t = make_tenant("pro", monthly_units=3, rate_per_minute=100_000)
    with t.client() as c:
        ok = c.post("/v1/depth-batches", json=t.depth_spec(2))
        assert ok.status_code == 202
        assert ok.headers["X-Quota-Limit"] == "3" and ok.headers["X-Quota-Remaining"] == "1"
        assert int(ok.headers["X-Quota-Reset"]) > 0
        assert ok.headers["X-RateLimit-Limit"] == "100000"  # the per-minute limit, not the month's
        refused = c.post("/v1/depth-batches", json=t.depth_spec(2))
        assert refused.status_code == 429
        assert refused.json()["error"]["code"] == "quota_exceeded"
        assert refused.headers["X-Quota-Limit"] == "3" and refused.headers["X-Quota-Remaining"] == "1"
        assert int(refused.headers["Retry-After"]) == int(refused.headers["X-Quota-Reset"]) > 0
        assert refused.headers.get("X-RateLimit-Limit", "100000") == "100000"
        assert c.get("/v1/jobs").headers["X-RateLimit-Limit"] == "100000"


def test_expired_idempotency_record_answers_the_existing_job(make_tenant, make_settings, cluster):
    """The record lives 24 h; the job longer. A retry after the record expired gets the same
    job (same body) or a 409 (another body), never a 503 on the name conflict."""
    t = make_tenant("pro", seconds=600)
    rc = _rc(make_settings)
    key = "order-expired-1"
    record = _record(t.id, key)
    headers = {"Idempotency-Key": key}
    with t.client() as c:
        first = c.post("/v1/depth-batches", json=t.depth_spec(2), headers=headers)
        assert first.status_code == 202
        assert rc.delete(record) == 1  # as if 24 h had passed
        again = c.post("/v1/depth-batches", json=t.depth_spec(2), headers=headers)
        assert again.status_code == 202, again.text
        assert again.json()["id"] == first.json()["id"] and again.headers["Idempotent-Replayed"] == "true"
        assert c.get("/v1/usage").json()["units_used"] == 2  # charged once
        rc.delete(record)
        other = c.post("/v1/depth-batches", json=t.depth_spec(3), headers=headers)
        assert other.status_code == 409, other.text
        assert other.json()["error"]["code"] == "idempotency_key_reused"
        assert first.json()["id"] in other.json()["error"]["message"]
        assert c.get("/v1/usage").json()["units_used"] == 2
        # Cancelled, then the record expires: the retry answers the cancelled job.
        assert c.delete(f"/v1/jobs/{first.json()['id']}").status_code == 202
        rc.delete(record)
        late = c.post("/v1/depth-batches", json=t.depth_spec(2), headers=headers)
        assert late.status_code == 202 and late.json()["phase"] == "Cancelled"
        assert late.json()["id"] == first.json()["id"]
    # The cancel deletes the DepthBatch asynchronously (a finalizer runs first): wait for it.
    wait_until("cancelled DepthBatch deleted", lambda: not cluster.list("depthbatches", t.namespace), MEDIUM)


def test_expired_record_and_a_stale_cache_still_answer_the_job(make_tenant, make_settings, api):
    """The name conflict itself (the job exists in Kubernetes, this process has not seen it)
    answers the existing job instead of a 503."""
    t = make_tenant("pro", seconds=600)
    rc = _rc(make_settings)
    key = "order-expired-2"
    record = _record(t.id, key)
    with t.client() as c:
        first = c.post("/v1/depth-batches", json=t.depth_spec(), headers={"Idempotency-Key": key}).json()
        rc.delete(record)
        cache = api.services.cache
        obj = cache.get(t.namespace, first["id"])
        cache.forget(obj)  # as a replica whose watch lags would
        try:
            again = c.post("/v1/depth-batches", json=t.depth_spec(), headers={"Idempotency-Key": key})
        finally:
            if cache.get(t.namespace, first["id"]) is None:
                cache.objects[(t.namespace, first["id"])] = obj
        assert again.status_code == 202, again.text
        assert again.json()["id"] == first["id"] and again.headers["Idempotent-Replayed"] == "true"
        assert c.get("/v1/usage").json()["units_used"] == 1


def test_units_of_jobs_that_never_ran_are_refunded(make_tenant, behaviour, make_settings):
    # Cancelled while Queued (behind the tenant's one GPU): refunded. Cancelled while Running: kept.
    t = make_tenant("pro", seconds=600, gpu_limit=1)
    with t.client() as c:
        running = c.post("/v1/depth-batches", json=t.depth_spec(3, placement={"gpus": 1})).json()
        _wait_phase(c, running["id"], "Running")
        queued = c.post("/v1/depth-batches", json=t.depth_spec(5, placement={"gpus": 1})).json()
        _wait_phase(c, queued["id"], "Queued")
        assert c.get("/v1/usage").json()["units_used"] == 8
        assert c.delete(f"/v1/jobs/{queued['id']}").status_code == 202
        usage = c.get("/v1/usage").json()
        assert usage["units_used"] == 3 and usage["units_refunded"] == 5
        assert c.delete(f"/v1/jobs/{running['id']}").status_code == 202
        usage = c.get("/v1/usage").json()
        assert usage["units_used"] == 3 and usage["units_refunded"] == 5
        assert usage["jobs"]["cancelled"] == 2

    # Failed fast (the image never pulled): refunded. Failed after running (invalid input): kept.
    pull = make_tenant("pro")
    behaviour.set(pull.namespace, waiting_reason="ImagePullBackOff")
    bad = make_tenant("pro")
    behaviour.set(bad.namespace, seconds=0.2, exit_code=42, message="not an image")
    for tenant, reason, used, refunded in ((pull, "ImagePullFailed", 0, 4), (bad, "InvalidInput", 4, 0)):
        with tenant.client() as c:
            job = c.post("/v1/depth-batches", json=tenant.depth_spec(4)).json()
            failed = _wait_phase(c, job["id"], "Failed")
            assert failed["reason"] == reason, failed

            def settled(c=c, used=used):
                u = c.get("/v1/usage").json()
                return u if u["jobs"].get("failed") == 1 and u["units_used"] == used else None
            usage = wait_until(f"usage of the {reason} job", settled, MEDIUM)
            assert usage["units_refunded"] == refunded
    # Once per job: a restarted front end replays every terminal job on its first listing.
    again = ServerThread(make_settings()).start()
    try:
        for tenant, used, refunded in ((pull, 0, 4), (bad, 4, 0)):
            with httpx.Client(base_url=again.url, headers=tenant.headers, timeout=30) as c:
                usage = c.get("/v1/usage").json()
                assert (usage["units_used"], usage["units_refunded"], usage["jobs"]["failed"]) == (used, refunded, 1)
    finally:
        again.stop()


def test_a_job_refused_at_admission_is_refunded(make_tenant):
    """8 GPUs in one pod: within the pro plan (16), but no node of the plane has 8 (4 each)."""
    t = make_tenant("pro")
    with t.client() as c:
        job = c.post("/v1/depth-batches", json=t.depth_spec(3, placement={"gpus": 8})).json()
        failed = _wait_phase(c, job["id"], "Failed")
        assert failed["reason"] in ("NoFittingNode", "ExceedsClusterBudget"), failed

        def refunded(c=c):
            u = c.get("/v1/usage").json()
            return u if u["units_refunded"] == 3 else None
        usage = wait_until("the refund", refunded, MEDIUM)
        assert usage["units_used"] == 0 and usage["jobs"] == {"failed": 1}


def test_cancelling_a_finished_job_is_409(make_tenant):
    t = make_tenant("pro", seconds=0.2)
    with t.client() as c:
        job = c.post("/v1/depth-batches", json=t.depth_spec()).json()
        _wait_phase(c, job["id"], "Succeeded")
        r = c.delete(f"/v1/jobs/{job['id']}")
        assert r.status_code == 409, r.text
        assert r.json()["error"]["code"] == "already_finished" and "Succeeded" in r.json()["error"]["message"]
        assert c.get(f"/v1/jobs/{job['id']}").json()["phase"] == "Succeeded"
        assert c.get("/v1/usage").json()["units_used"] == 1  # nothing refunded


def test_readiness_fails_with_the_reason_when_redis_may_evict(api, make_settings):
    rc = _rc(make_settings)
    before = rc.config_get("maxmemory-policy")["maxmemory-policy"]
    assert before == "noeviction"
    assert httpx.get(f"{api.url}/readyz").status_code == 200
    try:
        rc.config_set("maxmemory-policy", "allkeys-lru")
        r = httpx.get(f"{api.url}/readyz")
        assert r.status_code == 503
        assert "allkeys-lru" in r.json()["checks"]["redis"] and "noeviction" in r.json()["reason"]
    finally:
        rc.config_set("maxmemory-policy", before)
    assert httpx.get(f"{api.url}/readyz").status_code == 200


def test_skipped_images_of_a_succeeded_batch_are_refunded(make_tenant, behaviour, cluster):
    """`onInvalidImage: Skip`: two of four photos skipped -> two units back once it succeeds."""
    t = make_tenant("pro")
    behaviour.set(t.namespace, seconds=8)
    with t.client() as c:
        job = c.post("/v1/depth-batches", json=t.depth_spec(4, onInvalidImage="Skip")).json()
        _wait_phase(c, job["id"], "Running")
        # What the runner's shard reports for two undecodable photos. The node agent simulates the
        # runner here, so the admin writes the shard's entry; the operator sums it into the status.
        cluster.kubectl("patch", "depthbatch", job["id"], "-n", t.namespace, "--subresource=status",
                        "--type=merge", "-p",
                        '{"status": {"progress": {"shards": {"0": {"done": 4, "total": 4, "skipped": 2}}}}}')
        done = _wait_phase(c, job["id"], "Succeeded")
        assert done["skipped_images"] == 2, done

        def refunded(c=c):
            u = c.get("/v1/usage").json()
            return u if u["units_refunded"] == 2 else None
        usage = wait_until("the skipped images' units back", refunded, MEDIUM)
        assert usage["units_used"] == 2
