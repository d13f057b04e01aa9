"""Artifact stores: file:// and S3 on a real MinIO (multipart, checksums, not-found)."""

from __future__ import annotations

import hashlib
import os

import pytest

from spatialforge.runner.errors import InputNotFoundError
from spatialforge.runner.settings import RunnerSettings
from spatialforge.runner.storage import LocalStore, open_store
from spatialforge.runner.storage.local import file_uri
from spatialforge.runner.storage.s3 import S3Settings, S3Store


def test_local_store_roundtrip(tmp_path):
    store = LocalStore()
    base = file_uri(tmp_path, prefix=True)
    digest = store.put(base + "a/b/c.bin", b"hello")
    assert digest == hashlib.sha256(b"hello").hexdigest()
    assert store.get(base + "a/b/c.bin") == b"hello"
    assert store.exists(base + "a/b/c.bin") and not store.exists(base + "a/none")
    assert [o.uri for o in store.list(base + "a/")] == [base + "a/b/c.bin"]
    assert store.list(base + "missing/") == []
    with pytest.raises(InputNotFoundError):
        store.get(base + "nope")
    assert isinstance(open_store(base, RunnerSettings.from_env({})), LocalStore)


def test_s3_settings_from_secret_dir(tmp_path):
    (tmp_path / "AWS_ACCESS_KEY_ID").write_text("AK\n")
    (tmp_path / "AWS_SECRET_ACCESS_KEY").write_text("SK\n")
    s = S3Settings.from_runner(RunnerSettings.from_env({"SPATIALFORGE_S3_SECRET_DIR": str(tmp_path), "AWS_ACCESS_KEY_ID": "env",
                                                        "SPATIALFORGE_S3_ENDPOINT": "http://x:1", "AWS_REGION": "eu-west-1"}))
    assert (s.access_key, s.secret_key, s.endpoint_url, s.region) == ("AK", "SK", "http://x:1", "eu-west-1")
    assert "SK" not in repr(s)


def test_s3_store_on_minio(s3, tmp_path):
    store = S3Store(S3Settings.from_runner(RunnerSettings.from_env()))
    uri = f"s3://{s3}/dir/obj.txt"
    assert store.put(uri, b"data", content_type="text/plain") == hashlib.sha256(b"data").hexdigest()
    assert store.get(uri) == b"data"
    assert store.stat(uri).size == 4
    assert store.stat(f"s3://{s3}/dir/none") is None
    with pytest.raises(InputNotFoundError):
        store.get(f"s3://{s3}/dir/none")
    store.put(f"s3://{s3}/dir/sub/x", b"1")
    assert [o.uri for o in store.list(f"s3://{s3}/dir/")] == [uri, f"s3://{s3}/dir/sub/x"]
    head = store.client.head_object(Bucket=s3, Key="dir/obj.txt", ChecksumMode="ENABLED")
    assert head["Metadata"]["sha256"] == hashlib.sha256(b"data").hexdigest()
    assert "ChecksumCRC32" in head


def test_s3_multipart_upload_and_download(s3, tmp_path):
    settings = S3Settings.from_runner(RunnerSettings.from_env())
    settings.multipart_threshold = settings.multipart_chunksize = 5 * 1024 * 1024
    store = S3Store(settings)
    data = os.urandom(12 * 1024 * 1024 + 123)
    src = tmp_path / "big.bin"
    src.write_bytes(data)
    uri = f"s3://{s3}/big.bin"
    assert store.put_file(uri, src) == hashlib.sha256(data).hexdigest()
    head = store.client.head_object(Bucket=s3, Key="big.bin")
    assert head["ETag"].strip('"').endswith("-3")  # three parts: multipart really happened
    out = store.download(uri, tmp_path / "back.bin")
    assert hashlib.sha256(out.read_bytes()).hexdigest() == hashlib.sha256(data).hexdigest()
    assert store.get(uri) == data


def test_model_weights_from_s3_prefix(s3, model_dir, tmp_path, monkeypatch):
    import numpy as np

    from spatialforge.crds.v1alpha1.common import DepthModel
    from spatialforge.runner.devices import choose_device
    from spatialforge.runner.models.estimator import DepthEstimator

    store = S3Store(S3Settings.from_runner(RunnerSettings.from_env()))
    folder = model_dir / "depth-anything-v2-small-relative"
    for path in folder.iterdir():
        store.put_file(f"s3://{s3}/weights/{folder.name}/{path.name}", path)
    # `env` is the whole environment the runner sees: the object store's settings come with it.
    env = {**os.environ, "SPATIALFORGE_MODEL_DIR": f"s3://{s3}/weights/", "SPATIALFORGE_MODEL_CACHE": str(tmp_path / "cache")}
    est = DepthEstimator.load(DepthModel(), device=choose_device("cpu"), settings=RunnerSettings.from_env(env))
    assert (tmp_path / "cache" / folder.name / "config.json").is_file()
    (depth,) = est.predict_rgb([np.zeros((20, 30, 3), np.uint8)])
    assert depth.shape == (20, 30)


def test_staged_move_keeps_checksum_metadata_past_the_multipart_size(s3):
    """Publishing moves staged outputs server-side; a 4 MP float32 depth map (> 16 MiB) keeps its sha256."""
    store = S3Store(S3Settings.from_runner(RunnerSettings.from_env()))
    data = os.urandom(17 * 1024 * 1024)
    src, dst = f"s3://{s3}/.staging/a.depth.npy", f"s3://{s3}/shard-00000/a.depth.npy"
    digest = store.put(src, data, content_type="application/x-npy")
    store.move(src, dst)
    assert store.stat(src) is None and store.get(dst) == data
    head = store.client.head_object(Bucket=s3, Key="shard-00000/a.depth.npy")
    assert head["Metadata"]["sha256"] == digest and head["ContentType"] == "application/x-npy"
    assert store.delete_prefix(f"s3://{s3}/") == 1 and store.list(f"s3://{s3}/") == []
