"""Data that expires: the bucket lifecycle rules installed at start-up (tag filters, one
retention for uploads and one for results), tags on uploads, bounded upload size, uploaded
bytes in usage, results that answer 410 once expired or deleted, and `expires_at`.

The expiry itself runs on the store's schedule (days); these tests check the rules MinIO
holds and the front end's own answers around them.
"""

from __future__ import annotations

import datetime as dt
import json
from collections.abc import Iterator

import boto3
import httpx
import pytest

from spatialforge.apiserver.services.storage import RULE_RESULTS, RULE_UPLOADS
from spatialforge.crds.constants import ANNOTATION_OUTCOME, RETENTION_TAG
from spatialforge.crds.layout import shard_prefix
from tests.apiserver.conftest import BUCKET, ServerThread, wait_until
from tests.timeouts import MEDIUM


def _s3(minio):
    return boto3.client("s3", endpoint_url=minio.env["SPATIALFORGE_S3_ENDPOINT"],
                        aws_access_key_id=minio.env["AWS_ACCESS_KEY_ID"],
                        aws_secret_access_key=minio.env["AWS_SECRET_ACCESS_KEY"], region_name="us-east-1")


@pytest.fixture(scope="module")
def short_api(make_settings, operator, minio, api) -> Iterator[ServerThread]:
    """A front end with its own retention (7 days uploads, 14 results) and 1 KiB uploads; a
    rule of the bucket that is not ours is there before it starts and must survive."""
    s3 = _s3(minio)
    s3.head_bucket(Bucket=BUCKET)  # the session front end created it
    rules = [r for r in s3.get_bucket_lifecycle_configuration(Bucket=BUCKET)["Rules"] if r["ID"] != "someone-elses"]
    foreign = {"ID": "someone-elses", "Status": "Enabled", "Filter": {"Prefix": "scratch/"}, "Expiration": {"Days": 3}}
    s3.put_bucket_lifecycle_configuration(Bucket=BUCKET, LifecycleConfiguration={"Rules": [*rules, foreign]})
    server = ServerThread(make_settings(uploads_retention_days=7, results_retention_days=14, upload_max_bytes=1024)).start()
    yield server
    server.stop()


def test_lifecycle_rules_are_installed_with_tag_filters(api, short_api, minio):
    rules = {r["ID"]: r for r in _s3(minio).get_bucket_lifecycle_configuration(Bucket=BUCKET)["Rules"]}
    assert rules[RULE_UPLOADS]["Filter"]["Tag"] == {"Key": RETENTION_TAG, "Value": "upload"}
    assert rules[RULE_UPLOADS]["Expiration"]["Days"] == 7 and rules[RULE_UPLOADS]["Status"] == "Enabled"
    assert rules[RULE_RESULTS]["Filter"]["Tag"] == {"Key": RETENTION_TAG, "Value": "result"}
    assert rules[RULE_RESULTS]["Expiration"]["Days"] == 14
    assert rules["someone-elses"]["Filter"] == {"Prefix": "scratch/"}  # not ours: kept


def test_uploads_are_bounded_tagged_listed_and_counted(make_tenant, short_api, minio):
    t = make_tenant("pro", seconds=0.2)
    s3 = _s3(minio)
    with httpx.Client(base_url=short_api.url, headers=t.headers, timeout=30) as c:
        body = c.post("/v1/uploads", json={"files": [{"name": "big.jpg"}, {"name": "a.jpg"}, {"name": "b.jpg"}]}).json()
        assert body["max_bytes"] == 1024
        big, a, b = body["files"]
        refused = httpx.post(big["url"], data=big["fields"], files={"file": ("big.jpg", b"x" * 2048)})
        assert refused.status_code == 400 and "EntityTooLarge" in refused.text, refused.text
        for target, size in ((a, 600), (b, 400)):
            sent = httpx.post(target["url"], data=target["fields"], files={"file": (target["name"], b"y" * size)})
            assert sent.status_code in (200, 204), sent.text
        keys = {o["Key"] for o in s3.list_objects_v2(Bucket=BUCKET, Prefix=body["prefix"].removeprefix(f"s3://{BUCKET}/"))
                .get("Contents", [])}
        assert keys == {a["uri"].removeprefix(f"s3://{BUCKET}/"), b["uri"].removeprefix(f"s3://{BUCKET}/")}
        tags = s3.get_object_tagging(Bucket=BUCKET, Key=a["uri"].removeprefix(f"s3://{BUCKET}/"))["TagSet"]
        assert tags == [{"Key": RETENTION_TAG, "Value": "upload"}]

        # A job that uses the upload counts its bytes, once.
        assert c.get("/v1/usage").json()["upload_bytes"] == 0
        assert c.post("/v1/depth-batches", json=t.depth_spec(inputs=[body["prefix"]])).status_code == 202
        assert c.get("/v1/usage").json()["upload_bytes"] == 1000
        assert c.post("/v1/depth-batches", json=t.depth_spec(inputs=[a["uri"]])).status_code == 202
        assert c.get("/v1/usage").json()["upload_bytes"] == 1000

        # Listing shows size and expiry, and counts uploads no job used yet.
        other = c.post("/v1/uploads", json={"files": [{"name": "c.jpg"}]}).json()["files"][0]
        assert httpx.post(other["url"], data=other["fields"], files={"file": ("c.jpg", b"z" * 24)}).status_code in (200, 204)
        listed = c.get("/v1/uploads").json()
        assert listed["count"] == 2
        by_id = {u["id"]: u for u in listed["data"]}
        first = by_id[body["id"]]
        assert first["bytes"] == 1000 and first["files"] == 2 and first["prefix"] == body["prefix"]
        uploaded = dt.datetime.fromisoformat(first["uploaded_at"].replace("Z", "+00:00"))
        expires = dt.datetime.fromisoformat(first["expires_at"].replace("Z", "+00:00"))
        assert dt.timedelta(days=7) <= expires - uploaded <= dt.timedelta(days=8) and expires.hour == 0
        assert c.get("/v1/usage").json()["upload_bytes"] == 1024
        c.get("/v1/uploads")
        assert c.get("/v1/usage").json()["upload_bytes"] == 1024  # listing twice counts once


def _succeeded(c: httpx.Client, job_id: str) -> dict:
    def probe():
        job = c.get(f"/v1/jobs/{job_id}").json()
        return job if job.get("phase") == "Succeeded" else None
    return wait_until(f"job {job_id} Succeeded", probe, MEDIUM)


def test_results_expire_with_410_and_listings_show_expires_at(make_tenant, cluster, minio):
    t = make_tenant("pro", seconds=0.2)
    s3 = _s3(minio)
    with t.client() as c:
        job = c.post("/v1/depth-batches", json=t.depth_spec()).json()
        assert job["expires_at"] is None  # not finished: nothing to expire yet
        done = _succeeded(c, job["id"])
        started = dt.datetime.fromisoformat(done["started_at"].replace("Z", "+00:00"))
        expires = dt.datetime.fromisoformat(done["expires_at"].replace("Z", "+00:00"))
        assert dt.timedelta(days=30) <= expires - started <= dt.timedelta(days=31) and expires.hour == 0
        assert c.get("/v1/jobs").json()["data"][0]["expires_at"] == done["expires_at"]
        base = shard_prefix(f"{t.prefix}results", t.namespace, job["id"], 0).removeprefix(f"s3://{BUCKET}/")
        s3.put_object(Bucket=BUCKET, Key=f"{base}/manifest.json", Body=b"{}", Tagging=f"{RETENTION_TAG}=result")
        res = c.get(f"/v1/jobs/{job['id']}/results")
        assert res.status_code == 200 and res.json()["expires_at"] == done["expires_at"]

        # The job ran 40 days ago: its results are past retention. (The operator keeps the
        # terminal outcome in an annotation and restores status from it: both are rewritten.)
        old = (dt.datetime.now(dt.UTC) - dt.timedelta(days=40)).strftime("%Y-%m-%dT%H:%M:%SZ")
        outcome = wait_until("the operator records the outcome", lambda: (cluster.get(
            "depthbatch", job["id"], t.namespace)["metadata"].get("annotations") or {}).get(ANNOTATION_OUTCOME), MEDIUM)
        patched = {**json.loads(outcome), "start_time": old}
        cluster.kubectl("patch", "depthbatch", job["id"], "-n", t.namespace, "--type=merge", "-p",
                        json.dumps({"metadata": {"annotations": {ANNOTATION_OUTCOME: json.dumps(patched)}}}))
        cluster.kubectl("patch", "depthbatch", job["id"], "-n", t.namespace, "--subresource=status", "--type=merge",
                        "-p", json.dumps({"status": {"startTime": old}}))
        wait_until("the old start time reaches the front end",
                   lambda: c.get(f"/v1/jobs/{job['id']}").json()["started_at"] == old, MEDIUM)
        gone = c.get(f"/v1/jobs/{job['id']}/results")
        assert gone.status_code == 410, gone.text
        assert gone.json()["error"]["code"] == "results_expired" and "30 days" in gone.json()["error"]["message"]


def test_a_tenant_deletes_results_on_demand(make_tenant, minio):
    t = make_tenant("pro", seconds=0.2)
    s3 = _s3(minio)
    with t.client() as c:
        job = c.post("/v1/depth-batches", json=t.depth_spec(2)).json()
        running = make_tenant("pro", seconds=600)
        with running.client() as rc:
            slow = rc.post("/v1/depth-batches", json=running.depth_spec()).json()
            r = rc.delete(f"/v1/jobs/{slow['id']}/results")
            assert r.status_code == 409 and r.json()["error"]["code"] == "not_finished", r.text
        _succeeded(c, job["id"])
        base = shard_prefix(f"{t.prefix}results", t.namespace, job["id"], 0).removeprefix(f"s3://{BUCKET}/")
        for name in ("img-0.png", "manifest.json"):
            s3.put_object(Bucket=BUCKET, Key=f"{base}/{name}", Body=b"data")
        assert len(c.get(f"/v1/jobs/{job['id']}/results").json()["files"]) == 2
        deleted = c.delete(f"/v1/jobs/{job['id']}/results")
        assert deleted.status_code == 200, deleted.text
        assert deleted.json()["deleted_files"] == 2
        assert s3.list_objects_v2(Bucket=BUCKET, Prefix=base).get("KeyCount", 0) == 0
        gone = c.get(f"/v1/jobs/{job['id']}/results")
        assert gone.status_code == 410 and gone.json()["error"]["code"] == "results_deleted"
        assert c.get(f"/v1/jobs/{job['id']}").json()["phase"] == "Succeeded"  # the job itself stays
