"""DepthBatch end to end on the tiny model: local files, MinIO, EXIF, sharding, licences."""

from __future__ import annotations

import io
import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from spatialforge.crds.constants import EXIT_INVALID_INPUT
from spatialforge.runner import run_local


def _save(img: np.ndarray, path: Path, fmt: str, **kw) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(img).save(path, format=fmt, **kw)
    return path


def _decode_png16(path: Path) -> np.ndarray:
    import cv2

    arr = cv2.imread(str(path), cv2.IMREAD_UNCHANGED)
    assert arr is not None and arr.dtype == np.uint16
    return arr


def test_local_relative_end_to_end(tmp_path, model_dir, make_manifest, rgb_image):
    _save(rgb_image(48, 64, 1), tmp_path / "in" / "a.png", "PNG")
    _save(rgb_image(60, 40, 2), tmp_path / "in" / "b.jpg", "JPEG", quality=95)
    _save(rgb_image(30, 50, 3), tmp_path / "in" / "sub" / "c.webp", "WEBP")
    (tmp_path / "in" / "notes.txt").write_text("not an image")
    manifest = make_manifest(
        "DepthBatch", {"inputs": ["file://in/"], "output": {"uri": "file://out"}, "batchSize": 2}
    )
    outcome = run_local(manifest, show_progress=False)
    assert outcome.exit_code == 0, outcome.reason
    shard = tmp_path / "out" / "team-a" / "job" / "shard-00000"
    data = json.loads((shard / "manifest.json").read_text())
    assert [Path(r["input"]).name for r in data["images"]] == ["a.png", "b.jpg", "c.webp"]
    assert data["units"] == "relative-disparity"
    for rec in data["images"]:
        npy = np.load(shard / f"{rec['stem']}.depth.npy")
        assert npy.dtype == np.float32 and npy.shape == (rec["height"], rec["width"])
        png = _decode_png16(shard / f"{rec['stem']}.depth.png")
        assert png.shape == npy.shape
        assert np.allclose(png * rec["png16Scale"], npy, atol=rec["png16Scale"])
        assert rec["stats"]["min"] == pytest.approx(float(npy.min()), rel=1e-5)
        assert rec["stats"]["max"] == pytest.approx(float(npy.max()), rel=1e-5)
        assert rec["stats"]["mean"] == pytest.approx(float(npy.mean()), rel=1e-4)
        assert rec["intrinsics"]["source"] == "heuristic"
        assert rec["intrinsics"]["fx"] == pytest.approx(0.9 * max(rec["width"], rec["height"]))
        for out in rec["outputs"].values():
            assert Path(out["uri"].removeprefix("file://")).stat().st_size == out["bytes"]
    # The manifest is written last: nothing it lists is newer than it.
    mtime = (shard / "manifest.json").stat().st_mtime_ns
    assert all(p.stat().st_mtime_ns <= mtime for p in shard.rglob("*.depth.*"))


def test_manifest_is_the_last_write(model_dir, rgb_image):
    from spatialforge.crds.v1alpha1.depthbatch import DepthBatchSpec
    from spatialforge.runner.settings import RunnerSettings
    from spatialforge.runner.stages.base import RunContext
    from spatialforge.runner.stages.depth import DepthStage
    from spatialforge.runner.storage import MemoryStore

    store = MemoryStore()
    for i in range(5):
        buf = io.BytesIO()
        Image.fromarray(rgb_image(32, 32, i)).save(buf, format="PNG")
        store.put(f"s3://bucket/in/{i}.png", buf.getvalue())
    spec = DepthBatchSpec.model_validate({"inputs": ["s3://bucket/in/"], "output": {"uri": "s3://bucket/out"}, "batchSize": 2})
    ctx = RunContext(namespace="ns", name="n", settings=RunnerSettings.from_env())
    ctx.use_store("s3", store)
    result = DepthStage(io_workers=3).run(spec, ctx)
    writes = [u for u in store.put_order if u.startswith("s3://bucket/out/ns/n/shard-00000/")]
    assert writes[-1] == result.manifest_uri == "s3://bucket/out/ns/n/shard-00000/manifest.json"
    assert len(writes) == 16  # png16, npy and preview of five images, and the manifest
    staged = [u for u in store.put_order if u.startswith("s3://bucket/out/ns/n/.staging/shard-00000/")]
    assert len(staged) == 16  # fifteen outputs and the write probe, all staged first
    assert sorted(store.objects) == sorted([*(f"s3://bucket/in/{i}.png" for i in range(5)), *writes])
    assert ctx.progress.snapshot.done == 5 and ctx.progress.snapshot.stage == "done"


def test_metric_png_scale_and_spec_intrinsics(tmp_path, model_dir, make_manifest, rgb_image):
    _save(rgb_image(40, 56), tmp_path / "img.png", "PNG")
    spec = {
        "inputs": ["file://img.png"],
        "output": {"uri": "file://out"},
        "model": {"size": "small", "variant": "metric-outdoor"},
        "intrinsics": {"fx": 100.0, "fy": 101.0},
    }
    outcome = run_local(make_manifest("DepthBatch", spec), show_progress=False)
    assert outcome.exit_code == 0, outcome.reason
    shard = tmp_path / "out" / "team-a" / "job" / "shard-00000"
    rec = json.loads((shard / "manifest.json").read_text())["images"][0]
    npy = np.load(shard / "img.depth.npy")
    png = _decode_png16(shard / "img.depth.png")
    assert rec["png16Scale"] == 0.002  # outdoor: 2 mm steps, up to 131 m (the model reaches 80 m)
    assert np.array_equal(png, np.clip(np.rint(npy / 0.002), 0, 65535).astype(np.uint16))
    assert 0 <= npy.min() and npy.max() <= 80.0  # metric-outdoor: sigmoid x max_depth 80 m
    assert rec["intrinsics"] == {"fx": 100.0, "fy": 101.0, "cx": 28.0, "cy": 20.0, "source": "spec"}


def test_exif_orientation_and_focal(tmp_path, model_dir, make_manifest, rgb_image):
    from spatialforge.runner.images import decode_image

    raw = rgb_image(20, 40)  # stored landscape 40 x 20
    exif = Image.Exif()
    exif[0x0112] = 6  # rotate 90 degrees clockwise to display
    exif.get_ifd(0x8769)[0xA405] = 36  # 36 mm equivalent: focal = longer side
    path = _save(raw, tmp_path / "rot.jpg", "JPEG", exif=exif.tobytes(), quality=100)
    decoded = decode_image("rot.jpg", path.read_bytes(), max_pixels=10**6, max_bytes=10**6)
    assert (decoded.height, decoded.width) == (40, 20)
    assert decoded.orientation == 6
    right = np.abs(decoded.rgb.astype(int) - np.rot90(raw, k=-1).astype(int)).mean()  # clockwise
    wrong = np.abs(decoded.rgb.astype(int) - np.rot90(raw, k=1).astype(int)).mean()
    assert right < 10 and right < wrong / 4, (right, wrong)
    outcome = run_local(
        make_manifest("DepthBatch", {"inputs": ["file://rot.jpg"], "output": {"uri": "file://out"}}), show_progress=False
    )
    assert outcome.exit_code == 0, outcome.reason
    shard = tmp_path / "out" / "team-a" / "job" / "shard-00000"
    rec = json.loads((shard / "manifest.json").read_text())["images"][0]
    assert (rec["height"], rec["width"]) == (40, 20)
    assert np.load(shard / "rot.depth.npy").shape == (40, 20)
    assert rec["intrinsics"]["source"] == "exif" and rec["intrinsics"]["fx"] == pytest.approx(40.0)


def test_sharding_is_disjoint_and_covering(tmp_path, model_dir, make_manifest, rgb_image):
    names = [f"img{i:02d}.png" for i in range(7)]
    for i, n in enumerate(names):
        _save(rgb_image(24, 24, i), tmp_path / "in" / n, "PNG")
    manifest = make_manifest(
        "DepthBatch", {"inputs": ["file://in/"], "output": {"uri": "file://out"}, "parallelism": 3}
    )
    seen: list[list[str]] = []
    for index in range(3):  # as three pods would, one shard each
        outcome = run_local(manifest, shard_index=index, show_progress=False)
        assert outcome.exit_code == 0, outcome.reason
        m = json.loads(Path(outcome.results[0].manifest_uri.removeprefix("file://")).read_text())
        assert m["shard"] == {"index": index, "count": 3}
        seen.append([Path(r["input"]).name for r in m["images"]])
    flat = [n for shard in seen for n in shard]
    assert sorted(flat) == names and len(set(flat)) == len(flat)
    assert all(shard for shard in seen)
    # Without a shard index, `spatialforge run` runs all shards with one model load.
    outcome = run_local(manifest, show_progress=False)
    assert outcome.exit_code == 0 and len(outcome.results) == 3
    assert sum(r.items for r in outcome.results) == 7


def test_research_mode_gates_non_commercial_models(tmp_path, model_dir, make_manifest, rgb_image, runner_env, monkeypatch):
    _save(rgb_image(), tmp_path / "img.png", "PNG")
    manifest = make_manifest(
        "DepthBatch", {"inputs": ["file://img.png"], "output": {"uri": "file://out"}, "model": {"size": "base"}}
    )
    refused = run_local(manifest, show_progress=False)
    assert refused.exit_code == EXIT_INVALID_INPUT
    assert "CC-BY-NC" in refused.reason and "SPATIALFORGE_RESEARCH_MODE=1" in refused.reason
    assert runner_env.read_text().count("\n") == 1 and "CC-BY-NC" in runner_env.read_text()
    assert not (tmp_path / "out").exists()
    monkeypatch.setenv("SPATIALFORGE_RESEARCH_MODE", "1")
    allowed = run_local(manifest, show_progress=False)
    assert allowed.exit_code == 0, allowed.reason


def test_s3_end_to_end_on_minio(tmp_path, s3, model_dir, make_manifest, rgb_image):
    from spatialforge.runner.settings import RunnerSettings
    from spatialforge.runner.storage.s3 import S3Settings, S3Store

    store = S3Store(S3Settings.from_runner(RunnerSettings.from_env()))
    for i in range(3):
        buf = io.BytesIO()
        Image.fromarray(rgb_image(32, 48, i)).save(buf, format="PNG")
        store.put(f"s3://{s3}/inputs/photo{i}.png", buf.getvalue(), content_type="image/png")
    spec = {"inputs": [f"s3://{s3}/inputs/"], "output": {"uri": f"s3://{s3}/results"}, "batchSize": 2}
    outcome = run_local(make_manifest("DepthBatch", spec), show_progress=False)
    assert outcome.exit_code == 0, outcome.reason
    uri = f"s3://{s3}/results/team-a/job/shard-00000/manifest.json"
    assert outcome.results[0].manifest_uri == uri
    data = json.loads(store.get(uri))
    assert len(data["images"]) == 3
    for rec in data["images"]:
        npy = np.load(io.BytesIO(store.get(rec["outputs"]["npy"]["uri"])))
        assert npy.shape == (32, 48)
        head = store.client.head_object(Bucket=s3, Key=rec["outputs"]["png16"]["uri"].split("/", 3)[3])
        assert head["Metadata"]["sha256"] == rec["outputs"]["png16"]["sha256"]


def test_preprocessing_matches_the_image_processor(model_dir, rgb_image):
    import torch
    from transformers import AutoImageProcessor

    from spatialforge.runner.models.estimator import Preprocessing

    proc = AutoImageProcessor.from_pretrained(model_dir / "depth-anything-v2-small-relative")
    pre = Preprocessing.from_processor(proc)
    for h, w in [(48, 64), (300, 200), (518, 518), (97, 700)]:
        img = rgb_image(h, w, h)
        ours = pre(img)
        ref = proc(images=Image.fromarray(img), return_tensors="pt")["pixel_values"][0]
        assert tuple(ours.shape) == tuple(ref.shape), (h, w)
        assert float(torch.max(torch.abs(torch.from_numpy(ours) - ref))) < 1e-4, (h, w)


def test_tiny_model_cli_builds_a_loadable_checkpoint(tmp_path):
    import subprocess
    import sys

    from spatialforge.crds.v1alpha1.common import DepthModel
    from spatialforge.runner.devices import choose_device
    from spatialforge.runner.models.estimator import DepthEstimator
    from spatialforge.runner.settings import RunnerSettings

    out = tmp_path / "models"
    subprocess.run([sys.executable, "-m", "spatialforge.runner.models.tiny", str(out)], check=True, timeout=300)
    assert (out / "depth-anything-v2-small-metric-indoor" / "config.json").is_file()
    est = DepthEstimator.load(DepthModel(variant="metric-indoor"), device=choose_device("cpu"),
                               settings=RunnerSettings.from_env({"SPATIALFORGE_MODEL_DIR": str(out)}))
    assert est.metric and est.model.config.max_depth == 20.0
    (depth,) = est.predict_rgb([np.zeros((30, 40, 3), np.uint8)])
    assert depth.shape == (30, 40)
    size = sum(p.stat().st_size for p in (out / "depth-anything-v2-small-relative").iterdir())
    assert size < 2_000_000


@pytest.mark.parametrize("variant", ["metric-indoor", "metric-outdoor"])
def test_png16_round_trip_near_each_variants_max(variant):
    """The 16-bit PNG holds the variant's whole range: no clipping at 65.535 m outdoors."""
    import cv2

    from spatialforge.crds.v1alpha1.common import ModelSize, ModelVariant
    from spatialforge.runner.models.registry import METRIC_MAX_DEPTH, Checkpoint
    from spatialforge.runner.stages.depth import encode_png16

    ckpt = Checkpoint(size=ModelSize.small, variant=ModelVariant(variant))
    top = float(METRIC_MAX_DEPTH[ckpt.variant])
    assert 65535 * ckpt.png16_scale >= top
    depth = np.array([[0.0, 0.5, top / 2], [top - 0.01, top - 0.0005, top]], np.float32)
    data, scale = encode_png16(depth, scale=ckpt.png16_scale)
    assert scale == ckpt.png16_scale
    back = cv2.imdecode(np.frombuffer(data, np.uint8), cv2.IMREAD_UNCHANGED).astype(np.float64) * scale
    assert np.max(np.abs(back - depth)) <= scale / 2 + 1e-6
    assert back.max() == pytest.approx(top, abs=scale)


def test_png16_relative_is_scaled_per_image():
    from spatialforge.runner.stages.depth import encode_png16

    depth = np.array([[0.0, 1.5], [3.0, 12.0]], np.float32)
    data, scale = encode_png16(depth, scale=None)
    import cv2

    values = cv2.imdecode(np.frombuffer(data, np.uint8), cv2.IMREAD_UNCHANGED)
    assert values.max() == 65535 and scale == pytest.approx(12.0 / 65535)
    assert np.allclose(values * scale, depth, atol=scale)


def test_depth_maps_are_capped_at_max_pixels(tmp_path, model_dir, make_manifest, rgb_image):
    _save(rgb_image(120, 240, 4), tmp_path / "wide.png", "PNG")
    spec = {"inputs": ["file://wide.png"], "output": {"uri": "file://out", "maxPixels": 3200},
            "intrinsics": {"fx": 200.0, "fy": 200.0}}
    outcome = run_local(make_manifest("DepthBatch", spec), show_progress=False)
    assert outcome.exit_code == 0, outcome.reason
    shard = tmp_path / "out" / "team-a" / "job" / "shard-00000"
    data = json.loads((shard / "manifest.json").read_text())
    rec = data["images"][0]
    assert (rec["inputWidth"], rec["inputHeight"]) == (240, 120) and (rec["width"], rec["height"]) == (80, 40)
    assert np.load(shard / "wide.depth.npy").shape == (40, 80)
    assert _decode_png16(shard / "wide.depth.png").shape == (40, 80)
    assert rec["intrinsics"] == {"fx": pytest.approx(200 / 3), "fy": pytest.approx(200 / 3), "cx": 40.0, "cy": 20.0, "source": "spec"}
    assert data["maxPixels"] == 3200


def test_skip_invalid_images(tmp_path, model_dir, make_manifest, rgb_image):
    from spatialforge.runner.settings import RunnerSettings
    from spatialforge.runner.stages.base import RunContext

    (tmp_path / "in").mkdir()
    _save(rgb_image(32, 32, 1), tmp_path / "in" / "a.png", "PNG")
    _save(rgb_image(32, 32, 2), tmp_path / "in" / "c.png", "PNG")
    (tmp_path / "in" / "b.jpg").write_bytes(b"\xff\xd8\xff\xe0 not a jpeg" * 10)
    (tmp_path / "in" / "d.png").write_bytes(b"")
    _save(rgb_image(64, 64, 3), tmp_path / "in" / "e.png", "PNG")
    spec = {"inputs": ["file://in/"], "output": {"uri": "file://out"}, "onInvalidImage": "Skip", "maxImagePixels": 3000,
            "batchSize": 2}
    ctx = RunContext(namespace="team-a", name="job", settings=RunnerSettings.from_env())
    outcome = run_local(make_manifest("DepthBatch", spec), show_progress=False, ctx=ctx)
    assert outcome.exit_code == 0, outcome.reason
    shard = tmp_path / "out" / "team-a" / "job" / "shard-00000"
    data = json.loads((shard / "manifest.json").read_text())
    assert [Path(r["input"]).name for r in data["images"]] == ["a.png", "c.png"]
    reasons = {Path(r["input"]).name: r["reason"] for r in data["skipped"]}
    assert sorted(reasons) == ["b.jpg", "d.png", "e.png"]
    assert "cannot decode" in reasons["b.jpg"] and "zero-byte" in reasons["d.png"] and "maxImagePixels" in reasons["e.png"]
    assert data["summary"]["skipped"] == 3 and data["summary"]["images"] == 2
    snap = ctx.progress.snapshot
    assert (snap.done, snap.total, snap.skipped, snap.stage) == (5, 5, 3, "done")
    assert snap.as_status()["skipped"] == 3
    assert sorted(p.name for p in shard.iterdir()) == ["a.depth.npy", "a.depth.png", "a.preview.jpg", "c.depth.npy",
                                                       "c.depth.png", "c.preview.jpg", "manifest.json"]


def test_skip_with_nothing_valid_fails(tmp_path, model_dir, make_manifest):
    (tmp_path / "bad.jpg").write_bytes(b"\xff\xd8\xff\xe0 not a jpeg" * 10)
    spec = {"inputs": ["file://bad.jpg"], "output": {"uri": "file://out"}, "onInvalidImage": "Skip"}
    outcome = run_local(make_manifest("DepthBatch", spec), show_progress=False)
    assert outcome.exit_code == EXIT_INVALID_INPUT and "no valid image" in outcome.reason
    assert not [p for p in (tmp_path / "out").rglob("*") if p.is_file()]


def test_previews_are_written_by_default_and_listed(tmp_path, model_dir, make_manifest, rgb_image):
    """The `preview` format (on by default): one colour JPEG per image, at the depth map's size."""
    _save(rgb_image(48, 64, 1), tmp_path / "in" / "a.png", "PNG")
    manifest = make_manifest("DepthBatch", {"inputs": ["file://in/"], "output": {"uri": "file://out"}})
    assert run_local(manifest, show_progress=False).exit_code == 0
    shard = tmp_path / "out" / "team-a" / "job" / "shard-00000"
    (rec,) = json.loads((shard / "manifest.json").read_text())["images"]
    preview = rec["outputs"]["preview"]
    with Image.open(preview["uri"].removeprefix("file://")) as img:
        assert img.format == "JPEG" and img.size == (rec["width"], rec["height"]) and img.mode == "RGB"
        assert len(set(img.getdata())) > 1, "a preview of a real depth map is not one flat colour"
    # Asked only for npy: no preview.
    only = make_manifest("DepthBatch", {"inputs": ["file://in/"], "output": {"uri": "file://npy-only",
                                                                           "formats": ["npy"]}})
    assert run_local(only, show_progress=False).exit_code == 0
    assert not list((tmp_path / "npy-only").rglob("*.preview.jpg"))
