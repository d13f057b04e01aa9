"""No debris: a failed shard leaves nothing that looks like a result, on local files and on MinIO;
a killed attempt's leftovers are cleared by the next attempt."""

from __future__ import annotations

import io
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from PIL import Image

from spatialforge.crds.constants import EXIT_INVALID_INPUT
from spatialforge.runner import run_local
from tests.timeouts import MEDIUM


def _png(img) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(img).save(buf, format="PNG")
    return buf.getvalue()


def _local_files(root: Path) -> list[str]:
    return sorted(str(p.relative_to(root)) for p in root.rglob("*") if p.is_file()) if root.exists() else []


@pytest.mark.parametrize("where", ["local", "minio"])
def test_failed_shard_leaves_nothing(where, request, tmp_path, model_dir, make_manifest, rgb_image):
    """Two good images are written before the third, corrupt one fails the shard."""
    if where == "minio":
        from spatialforge.runner.settings import RunnerSettings
        from spatialforge.runner.storage.s3 import S3Settings, S3Store

        bucket = request.getfixturevalue("s3")
        store = S3Store(S3Settings.from_runner(RunnerSettings.from_env()))
        out_uri = f"s3://{bucket}/out"
    else:
        out_uri = "file://out"
    (tmp_path / "in").mkdir()
    (tmp_path / "in" / "a.png").write_bytes(_png(rgb_image(32, 32, 1)))
    (tmp_path / "in" / "b.png").write_bytes(_png(rgb_image(32, 32, 2)))
    (tmp_path / "in" / "z.png").write_bytes(_png(rgb_image(32, 32, 3))[:200])
    spec = {"inputs": ["file://in/"], "output": {"uri": out_uri}, "batchSize": 1}
    outcome = run_local(make_manifest("DepthBatch", spec), show_progress=False)
    assert outcome.exit_code == EXIT_INVALID_INPUT and "z.png" in outcome.reason
    if where == "minio":
        assert store.list(f"s3://{bucket}/") == []
    else:
        assert _local_files(tmp_path / "out") == []


def test_killed_attempt_is_cleared_by_the_next(tmp_path, model_dir, make_manifest, rgb_image):
    """SIGKILL mid-run (as the OOM killer does): its staged files stay, never in the shard
    folder, and the next attempt removes them before publishing its own result."""
    (tmp_path / "in").mkdir()
    count = 300
    for i in range(count):
        (tmp_path / "in" / f"img{i:03d}.png").write_bytes(_png(rgb_image(24, 24, i)))
    manifest = make_manifest("DepthBatch", {"inputs": ["file://in/"], "output": {"uri": "file://out"}, "batchSize": 1})
    staging = tmp_path / "out" / "team-a" / "job" / ".staging" / "shard-00000"
    shard = tmp_path / "out" / "team-a" / "job" / "shard-00000"
    code = "import sys; from spatialforge.runner import run_local; sys.exit(run_local(sys.argv[1], show_progress=False).exit_code)"
    child = subprocess.Popen([sys.executable, "-c", code, str(manifest)], env=dict(os.environ),
                             stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    try:
        deadline = time.monotonic() + MEDIUM
        while len(list(staging.rglob("*.depth.npy"))) < 3:
            assert child.poll() is None, f"the run ended before it could be killed: {child.stderr.read()!r}"
            assert time.monotonic() < deadline, "no staged output appeared"
            time.sleep(0.05)
        child.send_signal(signal.SIGKILL)
        child.wait(timeout=MEDIUM)
    finally:
        if child.poll() is None:
            child.kill()
            child.wait()
    assert child.returncode == -signal.SIGKILL
    left = _local_files(staging)
    assert left and len(left) < 3 * count  # debris, in the staging folder only
    assert _local_files(shard) == []
    outcome = run_local(manifest, show_progress=False)
    assert outcome.exit_code == 0, outcome.reason
    assert not staging.parent.exists()
    files = _local_files(shard)
    assert len(files) == 3 * count + 1 and "manifest.json" in files  # png16, npy, preview each
    assert len(json.loads((shard / "manifest.json").read_text())["images"]) == count


def test_leftovers_on_minio_are_cleared(tmp_path, s3, model_dir, make_manifest, rgb_image):
    """A killed attempt's staging and a publish cut short (files, no manifest) are both removed."""
    from spatialforge.runner.settings import RunnerSettings
    from spatialforge.runner.storage.s3 import S3Settings, S3Store

    store = S3Store(S3Settings.from_runner(RunnerSettings.from_env()))
    base = f"s3://{s3}/out/team-a/job"
    store.put(f"{base}/.staging/shard-00000/0123456789ab/old.depth.png", b"half of a png")
    store.put(f"{base}/shard-00000/stale.depth.npy", b"published before the kill")
    (tmp_path / "a.png").write_bytes(_png(rgb_image(32, 32, 1)))
    outcome = run_local(make_manifest("DepthBatch", {"inputs": ["file://a.png"], "output": {"uri": f"s3://{s3}/out"}}), show_progress=False)
    assert outcome.exit_code == 0, outcome.reason
    assert [o.uri.removeprefix(base + "/") for o in store.list(f"{base}/")] == [
        "shard-00000/a.depth.npy", "shard-00000/a.depth.png", "shard-00000/a.preview.jpg", "shard-00000/manifest.json"]


def test_outputs_written_before_a_failure_are_removed(model_dir, rgb_image):
    """Depth maps of the good images are staged before the corrupt one fails the shard, and gone after."""
    from spatialforge.crds.v1alpha1.depthbatch import DepthBatchSpec
    from spatialforge.runner.errors import InvalidImageError
    from spatialforge.runner.settings import RunnerSettings
    from spatialforge.runner.stages.base import RunContext
    from spatialforge.runner.stages.depth import DepthStage
    from spatialforge.runner.storage import MemoryStore

    store = MemoryStore()
    for i in range(4):
        store.put(f"s3://bucket/in/{i}.png", _png(rgb_image(32, 32, i)))
    store.put("s3://bucket/in/9.png", _png(rgb_image(32, 32, 9))[:300])
    spec = DepthBatchSpec.model_validate({"inputs": ["s3://bucket/in/"], "output": {"uri": "s3://bucket/out"}, "batchSize": 1})
    ctx = RunContext(namespace="ns", name="n", settings=RunnerSettings.from_env())
    ctx.use_store("s3", store)
    with pytest.raises(InvalidImageError, match="9.png"):
        DepthStage(io_workers=2).run(spec, ctx)
    staged = [u for u in store.put_order if "/.staging/" in u and u.endswith(".depth.npy")]
    assert len(staged) == 4  # every good image was written...
    assert [u for u in store.objects if u.startswith("s3://bucket/out/")] == []  # ...and removed
