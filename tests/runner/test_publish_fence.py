"""The publish fence (runner/storage/staging.py) on a real MinIO with versioning on: of a pool
hand-off attempt and the Job that replaces it, at most one ever publishes, whatever the order.

The steps of two publishers are interleaved by hand, so each order is run exactly, not hoped for.
"""

from __future__ import annotations

import concurrent.futures as cf
import json
import time
from typing import Any

import boto3
import pytest

from spatialforge.crds import layout
from spatialforge.runner.storage import LocalStore, MemoryStore
from spatialforge.runner.storage.staging import Publisher, PublishFenced, StagedOutput

NS, NAME, UID = "team-a", "small", "0f4c2c1e-uid"


@pytest.fixture
def bucket(s3: str, minio_env: dict[str, str]) -> Any:
    client = boto3.client("s3", endpoint_url=minio_env["SPATIALFORGE_S3_ENDPOINT"],
                          aws_access_key_id=minio_env["AWS_ACCESS_KEY_ID"],
                          aws_secret_access_key=minio_env["AWS_SECRET_ACCESS_KEY"], region_name="us-east-1")
    client.put_bucket_versioning(Bucket=s3, VersioningConfiguration={"Status": "Enabled"})
    return client


@pytest.fixture
def store() -> Any:
    from spatialforge.runner.settings import RunnerSettings
    from spatialforge.runner.storage.s3 import S3Settings, S3Store

    return S3Store(S3Settings.from_runner(RunnerSettings.from_env()))


def begin(store: Any, s3: str, attempt: str, publisher: Publisher | None) -> StagedOutput:
    """One attempt's output, its start-up clearing done (as DepthStage.run does it)."""
    out_uri = f"s3://{s3}/out"
    out = StagedOutput(store, final_prefix=layout.shard_prefix(out_uri, NS, NAME, 0),
                       staging_prefix=layout.staging_prefix(out_uri, NS, NAME, 0), attempt=attempt,
                       claim_uri=layout.claim_uri(out_uri, NS, NAME, UID, 0), publisher=publisher)
    out.clear_leftovers()
    return out


def stage(out: StagedOutput, tag: bytes) -> StagedOutput:
    """Its two depth maps staged (the manifest is written by publish)."""
    for i in range(2):
        out.put(f"img-{i}.depth.png", tag + bytes([i]))
    return out


def staged(store: Any, s3: str, attempt: str, publisher: Publisher | None, tag: bytes) -> StagedOutput:
    return stage(begin(store, s3, attempt, publisher), tag)


def manifest(tag: str) -> bytes:
    return json.dumps({"by": tag, "images": [{}, {}], "summary": {"images": 2, "seconds": 0.5}}).encode()


def versions(client: Any, s3: str) -> dict[str, int]:
    """How many versions (delete markers included) each result key has."""
    page = client.list_object_versions(Bucket=s3, Prefix=f"out/{NS}/{NAME}/shard-00000/")
    out: dict[str, int] = {}
    for v in page.get("Versions", []) + page.get("DeleteMarkers", []):
        out[v["Key"].rsplit("/", 1)[1]] = out.get(v["Key"].rsplit("/", 1)[1], 0) + 1
    return out


def pool(attempt: str = "a1b2c3", deadline: float | None = None) -> Publisher:
    return Publisher(uid=UID, name=f"pool/{attempt}", deadline=deadline or time.time() + 60)


def job(wait: float = 0.0) -> Publisher:
    return Publisher(uid=UID, name="job", wait_seconds=wait)


def test_without_the_fence_two_overlapping_runs_write_every_output_twice(s3, bucket, store) -> None:
    """The interleaving behind 'every output had 2 versions': two runs of one batch both clear
    leftovers and stage before either publishes; each publish then finds the shard empty and
    writes every key. (What a Job racing a late pool run, or a second live run of the attempt,
    did before the fence.)"""
    first, second = begin(store, s3, "a1b2c3", None), begin(store, s3, "9f8e7d", None)
    stage(first, b"pool"), stage(second, b"job")
    first.publish(manifest("pool"))
    second.publish(manifest("job"))
    assert versions(bucket, s3) == {"img-0.depth.png": 3, "img-1.depth.png": 3, "manifest.json": 3}
    # (v1, a delete marker from the second publish's clearing, v2: written twice either way)


def test_the_pool_claims_first_and_the_job_answers_with_its_result(s3, bucket, store) -> None:
    """A pool run that claimed before the operator gave up finishes its publish; the Job that
    runs meanwhile publishes nothing and answers with the pool's manifest."""
    late_pool = staged(store, s3, "a1b2c3", pool(), b"pool")
    late_pool.claim()  # before the deadline; then it is slow to move its files
    the_job = staged(store, s3, "9f8e7d", job(wait=5), b"job")  # its clearing leaves the claimed files alone
    late_pool.publish(manifest("pool"))
    with pytest.raises(PublishFenced) as fenced:
        the_job.publish(manifest("job"))
    assert fenced.value.holder == "pool/a1b2c3"
    the_job.discard()
    uri, theirs = the_job.published_by_holder(fenced.value)
    assert uri.endswith("shard-00000/manifest.json") and theirs["by"] == "pool"
    assert versions(bucket, s3) == {"img-0.depth.png": 1, "img-1.depth.png": 1, "manifest.json": 1}
    assert store.get(f"s3://{s3}/out/{NS}/{NAME}/shard-00000/img-0.depth.png") == b"pool\x00"
    assert not store.list(f"s3://{s3}/out/{NS}/{NAME}/.staging/")


def test_the_job_claims_first_and_the_late_pool_run_writes_nothing(s3, bucket, store) -> None:
    late_pool = staged(store, s3, "a1b2c3", pool(), b"pool")
    the_job = staged(store, s3, "9f8e7d", job(), b"job")  # clears the unclaimed pool staging
    the_job.publish(manifest("job"))
    with pytest.raises(PublishFenced) as fenced:
        late_pool.publish(manifest("pool"))
    assert fenced.value.holder == "job"
    late_pool.discard()
    with pytest.raises(PublishFenced):  # a pool run never waits: the operator is not listening
        late_pool.published_by_holder(fenced.value)
    assert versions(bucket, s3) == {"img-0.depth.png": 1, "img-1.depth.png": 1, "manifest.json": 1}
    assert json.loads(store.get(f"s3://{s3}/out/{NS}/{NAME}/shard-00000/manifest.json"))["by"] == "job"


def test_a_pool_run_past_its_deadline_does_not_claim(s3, bucket, store) -> None:
    """Past the deadline (the operator gave up: a Job runs it) the pool run claims nothing, so
    the Job publishes even if it comes later."""
    late_pool = staged(store, s3, "a1b2c3", pool(deadline=time.time() - 1), b"pool")
    with pytest.raises(PublishFenced, match="deadline") as fenced:
        late_pool.publish(manifest("pool"))
    assert fenced.value.holder is None
    late_pool.discard()
    staged(store, s3, "9f8e7d", job(), b"job").publish(manifest("job"))
    assert versions(bucket, s3) == {"img-0.depth.png": 1, "img-1.depth.png": 1, "manifest.json": 1}


def test_a_retry_of_the_same_publisher_finishes_a_publish_cut_short(s3, store) -> None:
    """A Job's next pod (or a restarted server re-running the same attempt) holds the claim
    already: it clears the half publish and publishes."""
    first = staged(store, s3, "111111", job(), b"job")
    first.claim()
    store.move(f"{first.attempt_prefix}/img-0.depth.png", first.final_uri("img-0.depth.png"))  # then SIGKILL
    retry = staged(store, s3, "222222", job(), b"job")
    assert retry.publish(manifest("job")).endswith("manifest.json")
    assert [o.uri.rsplit("/", 1)[1] for o in store.list(f"s3://{s3}/out/{NS}/{NAME}/shard-00000/")] == [
        "img-0.depth.png", "img-1.depth.png", "manifest.json"]


@pytest.mark.parametrize("kind", ["minio", "local", "memory"])
def test_of_many_concurrent_claims_exactly_one_wins(kind, s3, store, tmp_path) -> None:
    if kind == "local":
        store, uri = LocalStore(), (tmp_path / "claim").as_uri()
    elif kind == "memory":
        store, uri = MemoryStore(), "memory://b/claim"
    else:
        uri = f"s3://{s3}/claims/one"
    with cf.ThreadPoolExecutor(8) as pool_:
        won = list(pool_.map(lambda i: store.put_if_absent(uri, f"w{i}".encode()), range(16)))
    assert won.count(True) == 1
    assert store.get(uri) == f"w{won.index(True)}".encode()
    assert store.put_if_absent(uri, b"later") is False
