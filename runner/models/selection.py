"""Which backend runs: parity against eager transformers, then the setting or a timed pass here.

Before a cached export is used the first time, its output is compared with the eager model on a
fixed input (batch 2, non-square); an fp32 backend that differs by more than PARITY_RTOL (int8:
mean relative error over INT8_ABSREL) is refused, and a pass is remembered beside the export.
With `auto`, every candidate that holds parity is timed at the configured size once per machine
key (timing.py) and the fastest runs; the figures are cached and the choice is logged. `python -m spatialforge.runner.models.selection`
exports and checks ahead of time (image build or a warm cache).
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from spatialforge.runner.devices import DeviceChoice
from spatialforge.runner.models import timing
from spatialforge.runner.models.backend_cache import atomic_write, backend_cache, cached_int8, cached_onnx, checkpoint_digest
from spatialforge.runner.models.backends import (
    AUTO_ORDER_CPU,
    AUTO_ORDER_CUDA,
    INT8_BACKENDS,
    BackendError,
    DepthBackend,
    OnnxRuntimeBackend,
    OpenVinoBackend,
    TorchBackend,
    backend_choice,
    ort_providers,
)
from spatialforge.runner.models.export import SAMPLE_SHAPE
from spatialforge.runner.settings import RunnerSettings

log = logging.getLogger(__name__)

PARITY_RTOL = 1e-3  # max |backend - eager| / max |eager|, fp32
PARITY_RTOL_FP16 = 1e-2  # fp16 against fp16 eager: fp16 rounding alone is ~1e-3
INT8_ABSREL = 1e-2  # int8: mean |backend - eager| / eager over pixels with depth, fp32 eager


def abs_rel(candidate: np.ndarray, reference: np.ndarray) -> float:
    """AbsRel: mean |candidate - reference| / reference over the reference's nonzero pixels."""
    ref = reference.astype(np.float64)
    valid = ref > 1e-6 * max(float(np.abs(ref).max()), 1e-30)
    if not valid.any():
        return float(np.abs(candidate).max())
    return float(np.mean(np.abs(candidate.astype(np.float64)[valid] - ref[valid]) / ref[valid]))


def relative_difference(candidate: np.ndarray, reference: np.ndarray) -> float:
    """max |candidate - reference| / max |reference| (0 when both are zero)."""
    peak = float(np.abs(reference).max())
    diff = float(np.abs(candidate.astype(np.float64) - reference.astype(np.float64)).max())
    return diff / peak if peak > 0 else diff


def parity_input() -> np.ndarray:
    rng = np.random.default_rng(1234)
    return rng.standard_normal(SAMPLE_SHAPE).astype(np.float32)


def check_parity(backend: DepthBackend, reference: TorchBackend, marker: Path | None) -> float:
    """Compare with eager on a fixed input; remember a pass in `marker` so it runs once per cache."""
    if marker is not None and marker.is_file():
        return float(json.loads(marker.read_text())["relativeDifference"])
    x = parity_input()
    got = backend.forward(x).float().cpu().numpy()
    want = reference.forward(x).float().cpu().numpy()
    if backend.name in INT8_BACKENDS:
        rel, limit, what = abs_rel(got, want), INT8_ABSREL, "AbsRel"
    else:
        rel, what = relative_difference(got, want), "max relative difference"
        limit = PARITY_RTOL_FP16 if reference.device.half else PARITY_RTOL
    if not np.isfinite(rel) or rel > limit:
        raise BackendError(f"backend {backend.name} differs from transformers by {rel:.2e} {what} (limit {limit:.0e})")
    if marker is not None:
        atomic_write(marker, json.dumps({"relativeDifference": rel, "limit": limit}))
    return rel


@dataclass(frozen=True, kw_only=True)
class Selected:
    backend: DepthBackend
    parity: float | None  # relative difference from eager; None for eager itself
    measured: timing.Timing | None = None  # the timed pass, read from the cache or run now


def build_backend(name: str, *, model: Any, location: str, ckpt_name: str, device: DeviceChoice,
                  settings: RunnerSettings) -> Selected:
    """One named backend, exported and parity-checked; BackendError when it cannot run here."""
    eager = TorchBackend(model, device)
    if name == "torch":
        return Selected(backend=eager, parity=None)
    if name == "onnxruntime":
        _require("onnxruntime")
        if device.is_cuda:
            ort_providers(device, Path(os.devnull))  # fail before exporting when ORT has no CUDA provider
    elif name == "openvino":
        _require("openvino")
        if device.is_cuda:
            raise BackendError("openvino runs on CPU only; the device is " + device.torch_device)
    elif name in INT8_BACKENDS:
        _require("onnxruntime")
        if device.is_cuda:
            raise BackendError(f"{name} runs on CPU only; the device is " + device.torch_device)
    else:
        raise BackendError(f"unknown depth backend {name!r}")
    onnx_path = cached_onnx(model, location, ckpt_name, settings)
    folder = onnx_path.parent
    try:
        backend: DepthBackend
        if name == "onnxruntime":
            backend = OnnxRuntimeBackend(onnx_path, device, trt_cache=folder / "tensorrt")
        elif name in INT8_BACKENDS:
            backend = OnnxRuntimeBackend(cached_int8(onnx_path), device, trt_cache=folder / "tensorrt", name=name)
        else:
            backend = OpenVinoBackend(onnx_path, device, cache_dir=folder / "openvino")
    except BackendError:
        raise
    except Exception as exc:  # a runtime that cannot load the graph is a load error, not a crash
        raise BackendError(f"{name} cannot load {onnx_path}: {exc}") from exc
    dtype = "fp16" if device.half else "fp32"
    runtime = _runtime_version("onnxruntime" if name in INT8_BACKENDS else name)
    marker = folder / f"parity-{name}-{device.torch_device.split(':')[0]}-{dtype}-{runtime}.json"
    rel = check_parity(backend, eager, marker)
    return Selected(backend=backend, parity=rel)


def select_backend(*, model: Any, location: str, ckpt_name: str, device: DeviceChoice,
                   settings: RunnerSettings, shape: tuple[int, int] = SAMPLE_SHAPE[2:]) -> Selected:
    """The backend the setting names, or with `auto` the fastest here at `shape` (h, w); either way
    timed once per key, which also decides whether batching pays on this device."""
    choice = backend_choice(settings)
    candidates = (choice,) if choice != "auto" else AUTO_ORDER_CUDA if device.is_cuda else AUTO_ORDER_CPU
    cache = backend_cache(settings)
    try:
        digest = checkpoint_digest(location, cache)
    except Exception as exc:  # noqa: BLE001 - no digest, no key: time without caching
        log.warning("cannot key the backend timing of %s (%s); timing without a cache", ckpt_name, exc)
        digest = "uncached"
    parts = timing.machine(device=device, digest=digest, shape=shape, candidates=candidates)
    path = timing.timing_path(cache, ckpt_name, timing.key_of(parts))
    cached = timing.read_timing(path) if digest != "uncached" else None
    if cached is not None and timing.measured_under_load(cached):
        # A ranking taken with more runnable work than cores is noise (an OpenVINO lead measured
        # at load 10-20 was 20 % slower when quiet): use none, time again until one is quiet.
        log.info("depth backend timings in %s were measured at load %.1f on %d cores; timing again", path,
                 cached.load_average, timing.cores())
        cached = None
    if cached is not None:
        try:
            chosen = build_backend(cached.chosen, model=model, location=location, ckpt_name=ckpt_name, device=device,
                                   settings=settings)
        except BackendError as exc:
            if choice != "auto":
                raise
            log.warning("measured depth backend %s no longer builds (%s); timing again", cached.chosen, exc)
        else:
            log.info("depth backend %s (%s, measured earlier: %s ms/image at %dx%d; max batch %s; %s)", cached.chosen,
                     choice, _figures(cached.ms_per_image), *shape, cached.max_batch or "as the spec says", path)
            return Selected(backend=chosen.backend, parity=chosen.parity, measured=cached)
    return _measure(model=model, location=location, ckpt_name=ckpt_name, device=device, settings=settings,
                    shape=shape, parts=parts, path=path if digest != "uncached" else None, candidates=candidates)


def _measure(*, model: Any, location: str, ckpt_name: str, device: DeviceChoice, settings: RunnerSettings,
             shape: tuple[int, int], parts: dict[str, Any], path: Path | None, candidates: tuple[str, ...]) -> Selected:
    """Build every candidate, time each at `shape`, keep the fastest; write the figures to `path`.

    A single (named) candidate that cannot build raises; of several, those that cannot are skipped.
    """
    built: dict[str, Selected] = {}
    for name in candidates:
        try:
            built[name] = build_backend(name, model=model, location=location, ckpt_name=ckpt_name, device=device,
                                        settings=settings)
        except BackendError as exc:
            if len(candidates) == 1:
                raise
            log.warning("depth backend %s not used: %s", name, exc)
    x = timing.timing_input(shape, 1)
    ms = {name: round(1000 * timing.seconds_per_forward(sel.backend, x), 3) for name, sel in built.items()}
    fastest = min(ms, key=lambda n: ms[n])  # ties: the candidates' order
    probe = timing.BATCH_PROBE
    batched = 1000 * timing.seconds_per_forward(built[fastest].backend, timing.timing_input(shape, probe)) / probe
    max_batch = None if batched <= timing.BATCH_GAIN * ms[fastest] else 1
    record = timing.Timing(
        key=timing.key_of(parts), machine=parts, ms_per_image=ms, chosen=fastest, batch_probe=probe,
        batch_ms_per_image=round(batched, 3), max_batch=max_batch, load_average=timing.load_average(),
    )
    if path is not None:
        atomic_write(path, record.to_json())
    log.info("depth backend %s (%s, timed now at %dx%d, load %.2f: %s ms/image; batch %d %.1f ms/image, max batch %s)",
             fastest, "auto" if len(candidates) > 1 else "named", *shape, record.load_average, _figures(ms), probe, batched, max_batch or "as the spec says")
    return Selected(backend=built[fastest].backend, parity=built[fastest].parity, measured=record)


def _figures(ms: dict[str, float]) -> str:
    return ", ".join(f"{name} {value:.1f}" for name, value in ms.items())


def _require(module: str) -> None:
    import importlib.util

    if importlib.util.find_spec(module) is None:
        raise BackendError(f"{module} is not installed (pip install 'spatialforge[runner]')")


def _runtime_version(name: str) -> str:
    with contextlib.suppress(Exception):
        import importlib.metadata

        return importlib.metadata.version(name)
    return "unknown"


def main(argv: list[str] | None = None) -> int:
    """Export and check every backend for the checkpoints named (image build or a warm cache)."""
    import argparse

    from spatialforge.crds.v1alpha1.common import DepthModel, ModelSize, ModelVariant
    from spatialforge.runner.models.estimator import DepthEstimator

    parser = argparse.ArgumentParser(description=main.__doc__)
    parser.add_argument("--size", action="append", choices=[s.value for s in ModelSize], default=None)
    parser.add_argument("--variant", action="append", choices=[v.value for v in ModelVariant], default=None)
    parser.add_argument("--backend", default=None, help="default: SPATIALFORGE_DEPTH_BACKEND or auto")
    args = parser.parse_args(argv)
    settings = RunnerSettings.from_env()
    if args.backend:
        settings = settings.model_copy(update={"depth_backend": args.backend})
    for size in args.size or ["small"]:
        for variant in args.variant or ["relative"]:
            est = DepthEstimator.load(DepthModel(size=size, variant=variant), settings=settings)
            print(f"{est.checkpoint.name}: backend {est.backend.name}, parity {est.parity}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
