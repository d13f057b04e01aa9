"""Every kind of invalid input ends with EXIT_INVALID_INPUT, a one-line reason, and no manifest."""

from __future__ import annotations

import io
import os
import struct
import zlib
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from spatialforge.crds.constants import EXIT_INVALID_INPUT
from spatialforge.runner import run_local
from tests.timeouts import SHORT


def _png_chunk(kind: bytes, data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)


def huge_png(width: int = 10_000, height: int = 10_000) -> bytes:
    """A real, decodable 8-bit grey PNG of width x height (100 MP by default), ~100 KB on disk."""
    comp = zlib.compressobj(1)
    row = b"\x00" * (width + 1)
    parts = [comp.compress(row * 1000) for _ in range(height // 1000)]
    parts.append(comp.flush())
    ihdr = struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + _png_chunk(b"IHDR", ihdr) + _png_chunk(b"IDAT", b"".join(parts)) + _png_chunk(b"IEND", b"")


def _png_bytes(img: np.ndarray) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(img).save(buf, format="PNG")
    return buf.getvalue()


def _noise(h: int, w: int) -> np.ndarray:
    return np.random.default_rng(0).integers(0, 255, size=(h, w, 3), dtype=np.uint8)


CASES = {
    "corrupt": lambda: ("bad.jpg", b"\xff\xd8\xff\xe0 this is not really a jpeg" * 10, {}, "cannot decode"),
    "truncated": lambda: ("cut.png", _png_bytes(_noise(64, 64))[:3000], {}, "cannot decode"),
    "zero-byte": lambda: ("empty.png", b"", {}, "zero-byte"),
    "oversized-bytes": lambda: ("big.png", _png_bytes(_noise(32, 32)), {"maxImageBytes": 200}, "maxImageBytes"),
    "100-megapixel": lambda: ("huge.png", huge_png(), {}, "maxImagePixels"),
    "not-an-image-format": lambda: ("x.png", _gif_bytes(), {}, "is not one of JPEG, PNG, WebP, TIFF, HEIC or AVIF"),
}


def _gif_bytes() -> bytes:
    buf = io.BytesIO()
    Image.fromarray(_noise(8, 8)).save(buf, format="GIF")
    return buf.getvalue()


@pytest.mark.parametrize("case", sorted(CASES))
def test_invalid_image(case, tmp_path, model_dir, make_manifest, rgb_image, runner_env):
    name, data, extra, words = CASES[case]()
    Image.fromarray(rgb_image()).save(tmp_path / "good.png")
    (tmp_path / name).write_bytes(data)
    spec = {"inputs": ["file://good.png", f"file://{name}"], "output": {"uri": "file://out"}, **extra}
    outcome = run_local(make_manifest("DepthBatch", spec), show_progress=False)
    assert outcome.exit_code == EXIT_INVALID_INPUT, outcome.reason
    assert words in outcome.reason and name in outcome.reason
    message = runner_env.read_text()
    assert message.endswith("\n") and message.count("\n") == 1 and words in message
    assert not [p for p in (tmp_path / "out").rglob("*") if p.is_file()]  # no manifest, no depth map of good.png


def test_missing_input_uri(tmp_path, model_dir, make_manifest, runner_env):
    spec = {"inputs": ["file://nowhere/photo.png"], "output": {"uri": "file://out"}}
    outcome = run_local(make_manifest("DepthBatch", spec), show_progress=False)
    assert outcome.exit_code == EXIT_INVALID_INPUT
    assert "does not exist" in outcome.reason and "does not exist" in runner_env.read_text()
    assert not (tmp_path / "out").exists()


def test_empty_prefix(tmp_path, model_dir, make_manifest):
    (tmp_path / "in").mkdir()
    (tmp_path / "in" / "readme.txt").write_text("no images here")
    outcome = run_local(make_manifest("DepthBatch", {"inputs": ["file://in/"], "output": {"uri": "file://out"}}), show_progress=False)
    assert outcome.exit_code == EXIT_INVALID_INPUT and "no usable file" in outcome.reason


def test_invalid_spec(tmp_path, make_manifest, runner_env):
    spec = {"inputs": ["file://a.png"], "output": {"uri": "file://out"}, "batchSize": 0}
    outcome = run_local(make_manifest("DepthBatch", spec), show_progress=False)
    assert outcome.exit_code == EXIT_INVALID_INPUT and "batchSize" in outcome.reason


def test_s3_only_in_cluster(tmp_path, make_manifest):
    """file:// is a local-mode privilege: the in-cluster validation refuses it."""
    from spatialforge.runner.app import parse_resource
    from spatialforge.runner.errors import InvalidSpecError

    doc = {"apiVersion": "spatialforge.io/v1alpha1", "kind": "DepthBatch", "metadata": {"name": "x"},
           "spec": {"inputs": ["file:///etc/passwd"], "output": {"uri": "s3://bucket/out"}}}
    with pytest.raises(InvalidSpecError, match="s3://"):
        parse_resource(doc)
    assert parse_resource(doc, allow_local=True).spec.inputs == ["file:///etc/passwd"]


def _write_good(tmp_path: Path, rgb_image) -> None:
    Image.fromarray(rgb_image()).save(tmp_path / "img.png")


@pytest.mark.parametrize(
    ("output", "words"),
    [
        ("file://taken.txt", "is an existing file"),
        ("file://taken.txt/deeper/out", "is an existing file"),
        ("file:///proc/spatialforge-out", "cannot be written"),
    ],
)
def test_bad_output_location_is_invalid_before_the_model_loads(output, words, tmp_path, make_manifest, rgb_image, monkeypatch, runner_env):
    _write_good(tmp_path, rgb_image)
    (tmp_path / "taken.txt").write_text("a file where the output folder should go")
    # No weights at all: were the model loaded first, this would be a ModelLoadError (exit 1).
    monkeypatch.setenv("SPATIALFORGE_MODEL_DIR", str(tmp_path / "no-models"))
    outcome = run_local(make_manifest("DepthBatch", {"inputs": ["file://img.png"], "output": {"uri": output}}), show_progress=False)
    assert outcome.exit_code == EXIT_INVALID_INPUT, outcome.reason
    assert outcome.reason.startswith("InvalidOutputError") and words in outcome.reason
    assert runner_env.read_text().count("\n") == 1 and words in runner_env.read_text()
    assert (tmp_path / "taken.txt").read_text().startswith("a file")


def test_missing_bucket_is_invalid_output(tmp_path, s3, model_dir, make_manifest, rgb_image):
    _write_good(tmp_path, rgb_image)
    spec = {"inputs": ["file://img.png"], "output": {"uri": f"s3://{s3}-nope/out"}}
    outcome = run_local(make_manifest("DepthBatch", spec), show_progress=False)
    assert outcome.exit_code == EXIT_INVALID_INPUT and "bucket does not exist" in outcome.reason


@pytest.mark.parametrize("uri", ["file://localhost/tmp/in.png", "file://user@server/share/in.png",
                                 "file://server:445/share/in.png", "file:////server/share/in.png"])
def test_file_uri_with_a_host_is_refused(uri, tmp_path, make_manifest):
    outcome = run_local(make_manifest("DepthBatch", {"inputs": [uri], "output": {"uri": "file://out"}}), show_progress=False)
    assert outcome.exit_code == EXIT_INVALID_INPUT and "with a host" in outcome.reason


def test_corrupt_weights_are_one_line_model_load_error(tmp_path, model_dir, make_manifest, rgb_image):
    import shutil
    import subprocess
    import sys

    models = tmp_path / "models"
    shutil.copytree(model_dir / "depth-anything-v2-small-relative", models / "depth-anything-v2-small-relative")
    weights = models / "depth-anything-v2-small-relative" / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[:200] + b"\x00garbage" * 10)
    _write_good(tmp_path, rgb_image)
    manifest = make_manifest("DepthBatch", {"inputs": ["file://img.png"], "output": {"uri": "file://out"}})
    env = {**os.environ, "SPATIALFORGE_MODEL_DIR": str(models)}
    proc = subprocess.run([sys.executable, "-m", "spatialforge.runner.cli", str(manifest), "--quiet"],
                          env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 1, proc.stderr  # a deployment problem: retryable, as errors.py says
    assert "Traceback" not in proc.stderr and "ModelLoadError: cannot load depth-anything-v2-small-relative" in proc.stderr
    reason = [line for line in proc.stderr.splitlines() if line.startswith("failed (retryable)")]
    assert len(reason) == 1, proc.stderr


def test_no_model_dir_fails_fast_offline_with_the_fix(tmp_path, make_manifest, rgb_image, monkeypatch):
    """No model dir, an empty hub cache, no HF_HUB_OFFLINE: offline is the runner's own default."""
    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf"))
    _write_good(tmp_path, rgb_image)
    outcome = run_local(make_manifest("DepthBatch", {"inputs": ["file://img.png"], "output": {"uri": "file://out"}}), show_progress=False)
    assert outcome.exit_code == 1 and outcome.reason.startswith("ModelLoadError")
    assert "SPATIALFORGE_MODEL_DIR" in outcome.reason and "SPATIALFORGE_HUB_DOWNLOAD=1" in outcome.reason
    assert outcome.seconds < SHORT  # the hub's own retries took 99 s


def test_missing_weights_are_retryable(tmp_path, make_manifest, rgb_image, monkeypatch, runner_env):
    Image.fromarray(rgb_image()).save(tmp_path / "img.png")
    monkeypatch.setenv("SPATIALFORGE_MODEL_DIR", str(tmp_path / "no-models"))
    outcome = run_local(make_manifest("DepthBatch", {"inputs": ["file://img.png"], "output": {"uri": "file://out"}}), show_progress=False)
    assert outcome.exit_code == 1 and "ModelLoadError" in outcome.reason
    assert "ModelLoadError" in runner_env.read_text()
    assert not (tmp_path / "out").exists()


def _empty_video(path: Path) -> Path:
    import cv2

    writer = cv2.VideoWriter(str(path), cv2.VideoWriter_fourcc(*"mp4v"), 10.0, (64, 48))
    writer.release()
    if not path.exists():
        path.write_bytes(b"")
    return path


@pytest.mark.parametrize("kind", ["no-frames", "garbage", "zero-byte"])
def test_invalid_video(kind, tmp_path, model_dir, make_manifest, runner_env):
    path = tmp_path / "clip.mp4"
    if kind == "no-frames":
        _empty_video(path)
    elif kind == "garbage":
        path.write_bytes(b"\x00\x00\x00\x18ftypmp42" + bytes(range(256)) * 8)
    else:
        path.write_bytes(b"")
    spec = {"input": "file://clip.mp4", "output": {"uri": "file://out"}, "quality": "draft"}
    outcome = run_local(make_manifest("ReconstructionJob", spec), show_progress=False)
    assert outcome.exit_code == EXIT_INVALID_INPUT, outcome.reason
    assert "InvalidVideoError" in outcome.reason and "clip.mp4" in runner_env.read_text()
    assert not (tmp_path / "out").exists()
