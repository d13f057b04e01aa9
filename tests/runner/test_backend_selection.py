"""`auto` times the backends where the runner runs (runner/models/timing.py, selection.py), and the
opt-in int8 backend holds depth within 1 % AbsRel of transformers."""

from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np
import pytest
import torch

from spatialforge.crds.v1alpha1.common import DepthModel
from spatialforge.runner.devices import choose_device
from spatialforge.runner.models import selection, timing
from spatialforge.runner.models.backends import AUTO_ORDER_CPU, INT8_BACKENDS
from spatialforge.runner.models.estimator import DepthEstimator
from spatialforge.runner.settings import RunnerSettings

CKPT = "depth-anything-v2-small-relative"


def _load(model_dir: Path, backend: str, cache: Path) -> DepthEstimator:
    env = {**os.environ, "SPATIALFORGE_MODEL_DIR": str(model_dir), "SPATIALFORGE_DEPTH_BACKEND": backend,
           "SPATIALFORGE_BACKEND_CACHE": str(cache)}
    return DepthEstimator.load(DepthModel(), device=choose_device("cpu"), settings=RunnerSettings.from_env(env))


def _records(cache: Path) -> list[Path]:
    return sorted((cache / "timings").glob(f"{CKPT}-*.json"))


def test_auto_times_each_backend_once_and_takes_the_fastest(model_dir, tmp_path, caplog):
    cache = tmp_path / "cache"
    with caplog.at_level("INFO", logger="spatialforge.runner.models.selection"):
        est = _load(model_dir, "auto", cache)
    (path,) = _records(cache)
    record = json.loads(path.read_text())
    ms = record["ms_per_image"]
    assert set(ms) == set(AUTO_ORDER_CPU)  # every installed fp32 candidate was timed; int8 never
    assert all(v > 0 for v in ms.values())
    assert record["chosen"] == min(ms, key=ms.get) == est.backend.name
    assert record["machine"]["cpu"] == timing.cpu_model()
    assert record["machine"]["threads"] == torch.get_num_threads()
    assert record["machine"]["shape"] == [518, 518]  # the tiny checkpoint's processor size
    assert "timed now at 518x518" in caplog.text and f"depth backend {est.backend.name}" in caplog.text
    # The batch cap follows the figures: batching is kept only when it measured >= 5 % faster per image.
    faster = record["batch_ms_per_image"] <= timing.BATCH_GAIN * ms[record["chosen"]]
    assert record["max_batch"] == (None if faster else 1)
    assert est.batch_size(4) == (4 if faster else 1)


def test_a_second_start_reads_the_cache_and_another_key_times_again(model_dir, tmp_path, caplog):
    cache = tmp_path / "cache"
    _load(model_dir, "auto", cache)
    (path,) = _records(cache)
    record = json.loads(path.read_text())
    # Name another (real, working) backend in the record: a start that reads the cache runs it;
    # one that timed again would have picked the measured fastest and rewritten the record.
    other = next(b for b in AUTO_ORDER_CPU if b != record["chosen"])
    record["chosen"] = other
    record["load_average"] = 0.0  # measured quietly: a record taken under load is timed again
    path.write_text(json.dumps(record))
    caplog.clear()
    with caplog.at_level("INFO", logger="spatialforge.runner.models.selection"):
        assert _load(model_dir, "auto", cache).backend.name == other
    assert "measured earlier" in caplog.text and "timed now" not in caplog.text
    assert json.loads(path.read_text())["chosen"] == other
    # Another thread count is another key: timed again, into a second record.
    threads = torch.get_num_threads()
    torch.set_num_threads(1 if threads > 1 else 2)
    try:
        caplog.clear()
        with caplog.at_level("INFO", logger="spatialforge.runner.models.selection"):
            _load(model_dir, "auto", cache)
    finally:
        torch.set_num_threads(threads)
    assert "timed now" in caplog.text
    assert len(_records(cache)) == 2


def test_a_record_measured_under_load_is_timed_again(model_dir, tmp_path, caplog):
    cache = tmp_path / "cache"
    _load(model_dir, "auto", cache)
    (path,) = _records(cache)
    record = json.loads(path.read_text())
    record["chosen"] = next(b for b in AUTO_ORDER_CPU if b != record["chosen"])
    record["load_average"] = 10.0 * (os.cpu_count() or 1)
    path.write_text(json.dumps(record))
    caplog.clear()
    with caplog.at_level("INFO", logger="spatialforge.runner.models.selection"):
        _load(model_dir, "auto", cache)
    assert "timing again" in caplog.text and "timed now" in caplog.text
    assert json.loads(path.read_text())["load_average"] != record["load_average"]


def test_an_unreadable_record_is_timed_again(model_dir, tmp_path):
    cache = tmp_path / "cache"
    _load(model_dir, "auto", cache)
    (path,) = _records(cache)
    path.write_text("{not json")
    est = _load(model_dir, "auto", cache)
    assert json.loads(path.read_text())["chosen"] == est.backend.name


@pytest.mark.parametrize("name", INT8_BACKENDS)
def test_int8_depth_is_within_one_percent_absrel_of_transformers(model_dir, tmp_path, rgb_image, name):
    from transformers import AutoModelForDepthEstimation

    est = _load(model_dir, name, tmp_path / "cache")
    assert est.backend.name == name
    assert est.parity is not None and 0 < est.parity <= selection.INT8_ABSREL  # int8 is not bit-exact
    assert list((tmp_path / "cache").glob(f"{CKPT}-*/model-int8-ort*.onnx"))
    model = AutoModelForDepthEstimation.from_pretrained(str(model_dir / CKPT), dtype=torch.float32).eval()
    rng = np.random.default_rng(3)
    for shape in [(1, 3, 518, 686), (2, 3, 392, 518)]:
        x = rng.standard_normal(shape).astype(np.float32)
        with torch.inference_mode():
            want = model(pixel_values=torch.from_numpy(x)).predicted_depth.numpy()
        got = est.backend.forward(x).cpu().numpy()
        assert got.shape == want.shape
        assert selection.abs_rel(got, want) <= selection.INT8_ABSREL, shape
    # End to end on images, against the eager runner.
    images = [rgb_image(48, 64, 1), rgb_image(60, 40, 2)]
    eager = _load(model_dir, "torch", tmp_path / "cache").predict_rgb(images)
    for got, want in zip(est.predict_rgb(images), eager, strict=True):
        assert selection.abs_rel(got, want) <= selection.INT8_ABSREL


def test_abs_rel_is_mean_relative_error_over_pixels_with_depth():
    ref = np.array([[0.0, 1.0], [2.0, 4.0]], np.float32)
    assert selection.abs_rel(ref, ref) == 0
    got = ref * np.float32(1.02)
    assert selection.abs_rel(got, ref) == pytest.approx(0.02, rel=1e-5)  # the zero pixel is not counted


def test_a_named_backend_is_timed_alone_for_the_batch_choice(model_dir, tmp_path):
    cache = tmp_path / "cache"
    est = _load(model_dir, "torch", cache)
    (path,) = _records(cache)
    record = json.loads(path.read_text())
    assert record["machine"]["candidates"] == ["torch"] and list(record["ms_per_image"]) == ["torch"]
    assert est.max_batch == record["max_batch"]
    _load(model_dir, "auto", cache)  # auto's candidates are another key
    assert len(_records(cache)) == 2
