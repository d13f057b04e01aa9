"""End to end on the local control plane: kubectl-style resources, the operator, the node
agent running real runner processes, and MinIO. Nothing simulated but the GPU."""

from __future__ import annotations

import os
import signal
import uuid
from pathlib import Path
from typing import Any

import boto3
import numpy as np
import pytest

from spatialforge.devcluster.operator_process import OperatorProcess
from spatialforge.devcluster.plane import Cluster, wait_for
from tests import timeouts
from tests.conftest import RUNNER_SECRET, Behaviour
from tests.factories import depth_batch, reconstruction_job
from tests.integration.test_operator_lifecycle import status, wait_phase
from tests.runner.test_invalid import _png_bytes, huge_png

pytestmark = [pytest.mark.e2e, pytest.mark.slow]
RUN = timeouts.LONG


@pytest.fixture
def e2e(cluster: Cluster, operator: OperatorProcess, namespace: str, behaviour: Behaviour,
        minio_env: dict[str, str], model_dir: Path) -> dict[str, Any]:
    """A namespace whose pods run as real runner processes, with a fresh bucket."""
    bucket = f"e2e-{uuid.uuid4().hex[:10]}"
    s3 = boto3.client("s3", endpoint_url=minio_env["SPATIALFORGE_S3_ENDPOINT"],
                      aws_access_key_id=minio_env["AWS_ACCESS_KEY_ID"],
                      aws_secret_access_key=minio_env["AWS_SECRET_ACCESS_KEY"], region_name="us-east-1")
    s3.create_bucket(Bucket=bucket)
    secret = {"apiVersion": "v1", "kind": "Secret", "metadata": {"name": RUNNER_SECRET},
              "stringData": {**minio_env, "SPATIALFORGE_MODEL_DIR": str(model_dir), "HF_HUB_OFFLINE": "1",
                             "SPATIALFORGE_DEVICE": "cpu", "OMP_NUM_THREADS": "1"}}
    cluster.apply(secret, namespace)
    behaviour.set(namespace, mode="process")
    return {"ns": namespace, "bucket": bucket, "s3": s3}


def images(n: int, seed: int = 0) -> list[bytes]:
    rng = np.random.default_rng(seed)
    return [_png_bytes(rng.integers(0, 255, size=(48, 64, 3), dtype=np.uint8)) for _ in range(n)]


def keys(e2e: dict[str, Any], prefix: str) -> list[str]:
    pages = e2e["s3"].get_paginator("list_objects_v2").paginate(Bucket=e2e["bucket"], Prefix=prefix)
    return [o["Key"] for page in pages for o in page.get("Contents", [])]


def put(e2e: dict[str, Any], key: str, data: bytes) -> str:
    e2e["s3"].put_object(Bucket=e2e["bucket"], Key=key, Body=data)
    return f"s3://{e2e['bucket']}/{key}"


def test_depth_batch_end_to_end_in_two_shards(cluster: Cluster, e2e: dict[str, Any]) -> None:
    for i, data in enumerate(images(4)):
        put(e2e, f"in/img-{i}.png", data)
    out = f"s3://{e2e['bucket']}/out"
    cluster.apply(depth_batch("depth", gpus=0, parallelism=2, inputs=[f"s3://{e2e['bucket']}/in/"],
                              output={"uri": out}), e2e["ns"])
    st = wait_phase(cluster, "depthbatch", "depth", e2e["ns"], "Succeeded", RUN)
    assert st["progress"]["done"] == st["progress"]["total"] == 4 and st["progressSummary"] == "4/4"
    written = keys(e2e, f"out/{e2e['ns']}/depth/")
    assert sum(k.endswith("/manifest.json") for k in written) == 2
    assert sorted(Path(k).name for k in written if k.endswith(".png")) == [f"img-{i}.depth.png" for i in range(4)]


def test_reconstruction_end_to_end(cluster: Cluster, e2e: dict[str, Any], tmp_path: Path) -> None:
    from spatialforge.runner.synthetic import PinholeCamera, Room, orbit, render, write_video

    cam = PinholeCamera(width=160, height=120, fx=125.0, fy=125.0)
    frames = [render(Room(), cam, pose, supersample=1)[0] for pose in orbit(16)]
    video = write_video(tmp_path / "walk.mp4", frames, fps=8.0)
    uri = put(e2e, "in/walk.mp4", video.read_bytes())
    cluster.apply(reconstruction_job("recon", gpus=0, input=uri, output={"uri": f"s3://{e2e['bucket']}/out"},
                                     intrinsics={"fx": 125.0, "fy": 125.0}), e2e["ns"])
    st = wait_phase(cluster, "reconstructionjob", "recon", e2e["ns"], "Succeeded", RUN)
    written = {Path(k).name for k in keys(e2e, f"out/{e2e['ns']}/recon/shard-00000/")}
    assert {"manifest.json", "pointcloud.ply", "mesh.ply", "trajectory.json"} <= written
    assert st["manifestUri"] == f"s3://{e2e['bucket']}/out/{e2e['ns']}/recon/shard-00000/manifest.json"


BAD_INPUTS = {
    "corrupt": lambda: ("bad.jpg", b"\xff\xd8\xff\xe0 not really a jpeg" * 10),
    "zero-byte": lambda: ("empty.png", b""),
    "100-megapixel": lambda: ("huge.png", huge_png()),
    "truncated-video": lambda: ("cut.mp4", b"\x00\x00\x00\x18ftypmp42" + b"\x00" * 200),
}


@pytest.mark.parametrize("case", [*sorted(BAD_INPUTS), "missing"])
def test_invalid_input_fails_once_without_manifest(cluster: Cluster, e2e: dict[str, Any], case: str) -> None:
    name = f"bad-{case}"
    if case == "missing":
        uri = f"s3://{e2e['bucket']}/in/does-not-exist.png"
    else:
        filename, data = BAD_INPUTS[case]()
        uri = put(e2e, f"in/{filename}", data)
    out = {"uri": f"s3://{e2e['bucket']}/out"}
    if case == "truncated-video":
        cluster.apply(reconstruction_job(name, gpus=0, input=uri, output=out, backoffLimit=3), e2e["ns"])
        kind = "reconstructionjob"
    else:
        cluster.apply(depth_batch(name, gpus=0, inputs=[uri], output=out, backoffLimit=3), e2e["ns"])
        kind = "depthbatch"
    st = wait_phase(cluster, kind, name, e2e["ns"], "Failed", RUN)
    assert st["reason"] == "InvalidInput", st
    assert st["attempts"] == 1
    assert st["message"] and "\n" not in st["message"]
    assert not [k for k in keys(e2e, f"out/{e2e['ns']}/{name}/") if k.endswith("manifest.json")]


def _runner_pid(namespace: str, name: str) -> int | None:
    for proc in Path("/proc").iterdir():
        if not proc.name.isdigit():
            continue
        try:
            env = (proc / "environ").read_bytes().split(b"\0")
        except OSError:
            continue
        if f"SPATIALFORGE_NAMESPACE={namespace}".encode() in env and f"SPATIALFORGE_NAME={name}".encode() in env:
            return int(proc.name)
    return None


def versions(e2e: dict[str, Any], prefix: str) -> tuple[dict[str, int], set[str]]:
    """Per key under `prefix`, how many versions the (versioned) bucket holds; and the keys with a delete marker."""
    counts: dict[str, int] = {}
    deleted: set[str] = set()
    pages = e2e["s3"].get_paginator("list_object_versions").paginate(Bucket=e2e["bucket"], Prefix=prefix)
    for page in pages:
        for v in page.get("Versions", []):
            counts[v["Key"]] = counts.get(v["Key"], 0) + 1
        deleted.update(m["Key"] for m in page.get("DeleteMarkers", []))
    return counts, deleted


def test_runner_killed_mid_batch_is_retried_and_writes_each_output_once(cluster: Cluster, e2e: dict[str, Any]) -> None:
    # A versioned bucket keeps every write: a result key written by both attempts (or written,
    # deleted and written again) shows up as two versions or a delete marker, not as one key.
    e2e["s3"].put_bucket_versioning(Bucket=e2e["bucket"], VersioningConfiguration={"Status": "Enabled"})
    assert e2e["s3"].get_bucket_versioning(Bucket=e2e["bucket"])["Status"] == "Enabled"
    for i, data in enumerate(images(24, seed=3)):
        put(e2e, f"in/img-{i:02d}.png", data)
    cluster.apply(depth_batch("killed", gpus=0, batchSize=1, inputs=[f"s3://{e2e['bucket']}/in/"],
                              output={"uri": f"s3://{e2e['bucket']}/out"}, backoffLimit=2), e2e["ns"])
    wait_for("some progress", lambda: (status(cluster, "depthbatch", "killed", e2e["ns"]).get("progress") or {}).get("done", 0) >= 1,
             RUN, interval=0.2)
    pid = wait_for("the runner process", lambda: _runner_pid(e2e["ns"], "killed"), timeouts.SHORT)
    os.kill(pid, signal.SIGKILL)
    st = wait_phase(cluster, "depthbatch", "killed", e2e["ns"], "Succeeded", RUN)
    assert st["attempts"] == 2
    pngs = [k for k in keys(e2e, f"out/{e2e['ns']}/killed/") if k.endswith(".png")]
    assert sorted(Path(k).name for k in pngs) == [f"img-{i:02d}.depth.png" for i in range(24)]
    assert len(pngs) == len(set(pngs)) == 24
    counts, deleted = versions(e2e, f"out/{e2e['ns']}/killed/shard-")
    assert set(pngs) <= set(counts), "outputs are published under shard-<i>/"
    assert {k: n for k, n in counts.items() if n != 1} == {}, "a result key was written more than once"
    assert deleted == set(), "a result key was written, then deleted"
