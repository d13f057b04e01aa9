"""Depth backends (runner/models/backends.py, export.py, backend_cache.py, selection.py): parity with transformers, export cache, selection."""

from __future__ import annotations

import contextlib
import os
import shutil
import subprocess
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest

from spatialforge.crds.v1alpha1.common import DepthModel
from spatialforge.runner.devices import choose_device
from spatialforge.runner.errors import ModelLoadError
from spatialforge.runner.models import backend_cache, selection
from spatialforge.runner.models.backends import AUTO_ORDER_CPU, BACKENDS, BackendError
from spatialforge.runner.models.estimator import DepthEstimator
from spatialforge.runner.models.selection import relative_difference
from spatialforge.runner.settings import RunnerSettings

CKPT = "depth-anything-v2-small-relative"


def _load(model_dir: Path, backend: str, cache: Path | None = None) -> DepthEstimator:
    env = {**os.environ, "SPATIALFORGE_MODEL_DIR": str(model_dir), "SPATIALFORGE_DEPTH_BACKEND": backend}
    if cache is not None:
        env["SPATIALFORGE_BACKEND_CACHE"] = str(cache)
    return DepthEstimator.load(DepthModel(), device=choose_device("cpu"), settings=RunnerSettings.from_env(env))


def _transformers_depth(folder: Path, x: np.ndarray) -> np.ndarray:
    """The reference: transformers' own model, loaded on its own, fp32 on CPU."""
    import torch
    from transformers import AutoModelForDepthEstimation

    model = AutoModelForDepthEstimation.from_pretrained(str(folder), dtype=torch.float32).eval()
    with torch.inference_mode():
        return model(pixel_values=torch.from_numpy(x)).predicted_depth.numpy()


def _inputs(shapes: list[tuple[int, int, int, int]]) -> list[np.ndarray]:
    rng = np.random.default_rng(7)
    return [rng.standard_normal(s).astype(np.float32) for s in shapes]


@pytest.mark.parametrize("name", BACKENDS)
def test_each_backend_matches_transformers_on_the_tiny_model(model_dir, rgb_image, name):
    est = _load(model_dir, name)
    assert est.backend.name == name
    assert est.parity is None if name == "torch" else est.parity <= selection.PARITY_RTOL
    # Batch sizes and aspect ratios the export never saw: the graph is dynamic in all three.
    for x in _inputs([(1, 3, 518, 686), (3, 3, 392, 518), (2, 3, 14, 28)]):
        got = est.backend.forward(x).cpu().numpy()
        want = _transformers_depth(model_dir / CKPT, x)
        assert got.shape == want.shape
        assert relative_difference(got, want) <= 1e-3, (name, x.shape)
    # End to end (preprocess, batched forward, bicubic upsampling) against eager.
    images = [rgb_image(48, 64, 1), rgb_image(60, 40, 2), rgb_image(48, 64, 3)]
    eager = _load(model_dir, "torch").predict_rgb(images)
    for got, want in zip(est.predict_rgb(images), eager, strict=True):
        assert got.shape == want.shape
        assert relative_difference(got, want) <= 1e-3


@pytest.mark.slow
def test_fast_backends_match_transformers_on_v2_small_dimensions(tmp_path):
    """The published Small architecture (random weights, built here), at 518 px."""
    from spatialforge.runner.models.configs import save_random, v2_small_config

    root = tmp_path / "models"
    save_random(v2_small_config(), str(root / CKPT))
    (x,) = _inputs([(1, 3, 518, 686)])
    want = _transformers_depth(root / CKPT, x)
    for name in ("onnxruntime", "openvino"):
        est = _load(root, name, cache=tmp_path / "cache")
        got = est.backend.forward(x).cpu().numpy()
        rel = relative_difference(got, want)
        assert rel <= 1e-3, (name, rel)


def test_the_export_is_cached_by_checkpoint_content(tmp_path, monkeypatch):
    from spatialforge.runner.models.tiny import build_tiny_model

    cache = tmp_path / "cache"
    build_tiny_model(tmp_path / "a" / CKPT, seed=0)
    first = _load(tmp_path / "a", "onnxruntime", cache)
    exports = sorted(p.name for p in cache.iterdir() if p.name.startswith(CKPT))
    assert len(exports) == 1

    def no_export(*args, **kwargs):
        raise AssertionError("exported again although the cache holds this checkpoint")

    monkeypatch.setattr(backend_cache, "export_onnx", no_export)
    again = _load(tmp_path / "a", "openvino", cache)  # same ONNX file, another runtime
    x = _inputs([(2, 3, 56, 84)])[0]
    assert relative_difference(again.backend.forward(x).numpy(), first.backend.forward(x).numpy()) <= 1e-3
    monkeypatch.undo()
    # Other weights under the same checkpoint name: a new export, the old one kept.
    build_tiny_model(tmp_path / "b" / CKPT, seed=1)
    _load(tmp_path / "b", "onnxruntime", cache)
    assert len([p for p in cache.iterdir() if p.name.startswith(CKPT)]) == 2


def test_a_cached_export_that_breaks_parity_is_refused(tmp_path, caplog):
    """A stale or foreign file in the cache: named backends refuse it, auto falls back to eager."""
    from spatialforge.runner.models.tiny import build_tiny_model

    cache = tmp_path / "cache"
    build_tiny_model(tmp_path / "a" / CKPT, seed=0)
    build_tiny_model(tmp_path / "b" / CKPT, seed=1)
    _load(tmp_path / "a", "onnxruntime", cache)
    (folder_a,) = [p for p in cache.iterdir() if p.name.startswith(CKPT)]
    _load(tmp_path / "b", "onnxruntime", cache)
    (folder_b,) = [p for p in cache.iterdir() if p.name.startswith(CKPT) and p != folder_a]
    shutil.copy(folder_b / "model.onnx", folder_a / "model.onnx")  # b's graph under a's key
    for marker in folder_a.glob("parity-*.json"):
        marker.unlink()
    for name in ("onnxruntime", "openvino"):
        with pytest.raises(BackendError, match="differs from transformers"):
            _load(tmp_path / "a", name, cache)
    with caplog.at_level("WARNING"):
        est = _load(tmp_path / "a", "auto", cache)
    assert est.backend.name == "torch"
    assert "differs from transformers" in caplog.text


def test_auto_takes_the_fastest_measured_backend(model_dir, tmp_path):
    """Measured here, not a fixed order (the cache and its key: test_backend_selection.py)."""
    import json

    est = _load(model_dir, "auto", tmp_path / "cache")
    (record,) = (tmp_path / "cache" / "timings").glob(f"{CKPT}-*.json")
    ms = json.loads(record.read_text())["ms_per_image"]
    assert set(ms) == set(AUTO_ORDER_CPU)
    assert est.backend.name == min(ms, key=ms.get)


def test_an_unknown_backend_setting_is_refused(model_dir):
    with pytest.raises(ModelLoadError, match="SPATIALFORGE_DEPTH_BACKEND"):
        _load(model_dir, "tensorflow")


def test_ahead_of_time_export_fills_the_cache(model_dir, tmp_path, monkeypatch, capsys):
    """`python -m spatialforge.runner.models.selection` (image build or a pre-export job)."""
    monkeypatch.setenv("SPATIALFORGE_BACKEND_CACHE", str(tmp_path / "cache"))
    assert selection.main(["--backend", "openvino"]) == 0
    assert f"{CKPT}: backend openvino" in capsys.readouterr().out
    (export,) = (tmp_path / "cache").glob(f"{CKPT}-*/model.onnx")
    assert list(export.parent.glob("parity-openvino-cpu-fp32-*.json"))


@contextlib.contextmanager
def _read_only(folder: Path) -> Iterator[None]:
    """Make `folder` unwritable even for root (the suites run as root, where mode 0555 is no
    barrier): the immutable flag, else a read-only bind mount of the folder onto itself."""
    folder.chmod(0o555)
    try:
        if not os.access(folder, os.W_OK):
            yield
            return
        attempts = ((["chattr", "+i", str(folder)], ["chattr", "-i", str(folder)]),
                    (["mount", "--bind", "-o", "ro", str(folder), str(folder)], ["umount", str(folder)]))
        for make, undo in attempts:
            if shutil.which(make[0]) is None:
                continue
            if subprocess.run(make, capture_output=True, check=False).returncode != 0:
                continue
            try:
                if not os.access(folder, os.W_OK):
                    yield
                    return
            finally:
                subprocess.run(undo, capture_output=True, check=True)
        pytest.skip("cannot make a folder unwritable for root here (no chattr +i, no read-only bind mount)")
    finally:
        folder.chmod(0o755)


def test_the_default_cache_is_beside_a_local_model_dir(tmp_path):
    """So Job pods (each with its own model cache) share one export through the model volume."""
    from spatialforge.runner.models.backend_cache import backend_cache

    models, cache = tmp_path / "models", tmp_path / "model-cache"
    models.mkdir()
    settings = RunnerSettings.from_env({"SPATIALFORGE_MODEL_DIR": str(models), "SPATIALFORGE_MODEL_CACHE": str(cache)})
    assert backend_cache(settings) == models / "_backends"
    s3 = RunnerSettings.from_env({"SPATIALFORGE_MODEL_DIR": "s3://bucket/models/", "SPATIALFORGE_MODEL_CACHE": str(cache)})
    assert backend_cache(s3) == cache / "_backends"
    with _read_only(models):  # read-only and no export there: the model cache
        with pytest.raises(OSError):
            (models / "_backends").mkdir()
        assert backend_cache(settings) == cache / "_backends"
    explicit = RunnerSettings.from_env({"SPATIALFORGE_MODEL_DIR": str(models), "SPATIALFORGE_BACKEND_CACHE": str(tmp_path / "x")})
    assert backend_cache(explicit) == tmp_path / "x"
