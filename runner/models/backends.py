"""Depth model backends: eager PyTorch, ONNX Runtime and OpenVINO, all from the same checkpoint.

The ONNX graph is exported from the loaded transformers model on first use (or at image build:
`python -m spatialforge.runner.models.backends`), with a dynamic batch and a dynamic height and
width (multiples of 14), and cached under a key made of the checkpoint's content hash, the
versions of torch / transformers / the runtime, the opset and this shape policy. Before a
cached export is used the first time, its output is compared with the eager model on a fixed
input (batch 2, non-square); a backend that differs by more than PARITY_RTOL is refused.

`SPATIALFORGE_DEPTH_BACKEND` (RunnerSettings.depth_backend): `auto` (default) takes the first of AUTO_ORDER that is installed,
usable on the device and holds parity; the order is the one bench/depth_throughput.py measured.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import os
import shutil
import tempfile
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

import numpy as np

from spatialforge.crds.constants import ENV_DEPTH_BACKEND
from spatialforge.runner.devices import DeviceChoice
from spatialforge.runner.errors import ModelLoadError
from spatialforge.runner.settings import RunnerSettings

log = logging.getLogger(__name__)

BACKENDS = ("torch", "onnxruntime", "openvino")
# Fastest first, as measured by bench/depth_throughput.py (Small at 518 px, 2 CPU cores):
# OpenVINO f32 > ONNX Runtime > eager torch. On CUDA only ONNX Runtime's TensorRT/CUDA
# providers and torch apply.
AUTO_ORDER_CPU = ("openvino", "onnxruntime", "torch")
AUTO_ORDER_CUDA = ("onnxruntime", "torch")
PARITY_RTOL = 1e-3  # max |backend - eager| / max |eager|, fp32
PARITY_RTOL_FP16 = 1e-2  # fp16 against fp16 eager: fp16 rounding alone is ~1e-3
OPSET = 18
SHAPE_POLICY = "dynamic-batch,h=14k,w=14k"  # one graph for every batch size and aspect ratio
EXPORT_REVISION = 2  # bump when export_onnx changes what it writes: old cache entries are then ignored
_PARITY_SHAPE = (2, 3, 14 * 19, 14 * 25)  # batch > 1 and h != w, so no dimension is specialised
_INPUT, _OUTPUT = "pixel_values", "predicted_depth"


class BackendError(ModelLoadError):
    """A backend cannot run here (not installed, wrong device) or does not hold parity."""


class DepthBackend(Protocol):
    """Runs the depth network: (B, 3, h, w) float32 normalised pixels -> (B, h, w) float32 tensor."""

    name: str

    def forward(self, batch: np.ndarray) -> Any: ...


def backend_choice(settings: RunnerSettings) -> str:
    choice = (settings.depth_backend or "auto").strip().lower()
    if choice != "auto" and choice not in BACKENDS:
        raise ModelLoadError(f"{ENV_DEPTH_BACKEND}={choice!r}: expected auto or one of {', '.join(BACKENDS)}")
    return choice


class TorchBackend:
    """transformers' model, eager, on the estimator's device and dtype."""

    name = "torch"

    def __init__(self, model: Any, device: DeviceChoice) -> None:
        self.model = model
        self.device = device

    def forward(self, batch: np.ndarray) -> Any:
        import torch

        with torch.inference_mode():
            x = torch.from_numpy(batch)
            if self.device.is_cuda:
                x = x.pin_memory()  # lets the copy below run asynchronously
            x = x.to(self.device.torch_device, dtype=self.device.torch_dtype, non_blocking=True)
            return self.model(pixel_values=x).predicted_depth.float()


class OnnxRuntimeBackend:
    """ONNX Runtime: CPU provider here; TensorRT then CUDA providers in the GPU image."""

    name = "onnxruntime"

    def __init__(self, onnx_path: Path, device: DeviceChoice, *, trt_cache: Path) -> None:
        import onnxruntime as ort

        opts = ort.SessionOptions()
        opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        self.device = device
        self.session = ort.InferenceSession(str(onnx_path), opts, providers=_ort_providers(device, trt_cache))

    def forward(self, batch: np.ndarray) -> Any:
        import torch

        out = self.session.run([_OUTPUT], {_INPUT: np.ascontiguousarray(batch, dtype=np.float32)})[0]
        return torch.from_numpy(out).to(self.device.torch_device)


class OpenVinoBackend:
    """OpenVINO on CPU, reading the same ONNX file, at f32 precision.

    OpenVINO's CPU default on bf16-capable CPUs is bf16, about 2x faster here but 1.2e-2 from
    transformers: outside parity, so f32 is forced.
    """

    name = "openvino"

    def __init__(self, onnx_path: Path, device: DeviceChoice, *, cache_dir: Path) -> None:
        import openvino as ov

        if device.is_cuda:
            raise BackendError("openvino runs on CPU only; the device is " + device.torch_device)
        core = ov.Core()
        core.set_property({"CACHE_DIR": str(cache_dir)})
        self.compiled = core.compile_model(str(onnx_path), "CPU", {"INFERENCE_PRECISION_HINT": "f32"})
        self._requests = threading.local()

    def forward(self, batch: np.ndarray) -> Any:
        import torch

        req = getattr(self._requests, "req", None)
        if req is None:  # one infer request per thread: requests are not thread-safe
            req = self._requests.req = self.compiled.create_infer_request()
        out = req.infer({0: np.ascontiguousarray(batch, dtype=np.float32)})
        return torch.from_numpy(np.array(out[self.compiled.output(0)]))


def _ort_providers(device: DeviceChoice, trt_cache: Path) -> list[Any]:
    import onnxruntime as ort

    available = set(ort.get_available_providers())
    if not device.is_cuda:
        return ["CPUExecutionProvider"]
    index = int(device.torch_device.split(":", 1)[1]) if ":" in device.torch_device else 0
    providers: list[Any] = []
    if "TensorrtExecutionProvider" in available:
        trt_cache.mkdir(parents=True, exist_ok=True)
        providers.append(("TensorrtExecutionProvider", {
            "device_id": index,
            "trt_fp16_enable": device.half,
            "trt_engine_cache_enable": True,
            "trt_engine_cache_path": str(trt_cache),
            "trt_timing_cache_enable": True,
            # one optimisation profile: 518 px on the short side, batches up to 16
            "trt_profile_min_shapes": f"{_INPUT}:1x3x14x14",
            "trt_profile_opt_shapes": f"{_INPUT}:8x3x518x686",
            "trt_profile_max_shapes": f"{_INPUT}:16x3x1036x1036",
        }))
    if "CUDAExecutionProvider" in available:
        providers.append(("CUDAExecutionProvider", {"device_id": index}))
    if not providers:
        raise BackendError(f"onnxruntime has no CUDA provider here (has {sorted(available)}); install onnxruntime-gpu")
    return [*providers, "CPUExecutionProvider"]


# --- export and cache -------------------------------------------------------------------------


def backend_cache(settings: RunnerSettings) -> Path:
    """SPATIALFORGE_BACKEND_CACHE; else `_backends/` beside the weights when the model dir is a
    local folder that has one or can take one (shared by every pod and run that mounts it, so
    a Job pod does not export again); else `_backends/` in the (per-pod) model cache."""
    from spatialforge.runner.models.registry import model_cache

    if settings.backend_cache:
        return Path(settings.backend_cache)
    model_dir = (settings.model_dir or "").strip()
    if model_dir and "://" not in model_dir:
        beside = Path(model_dir) / "_backends"
        if beside.is_dir() or os.access(model_dir, os.W_OK):
            return beside
    return model_cache(settings) / "_backends"


def checkpoint_digest(location: str, cache: Path) -> str:
    """sha256 over the checkpoint's config and weight files (memoised by path, size and mtime)."""
    folder = Path(location)
    if not folder.is_dir():  # a hub repo id: its snapshot folder in the Hugging Face cache
        from huggingface_hub import snapshot_download

        folder = Path(snapshot_download(location, local_files_only=True))
    files = sorted(p for p in folder.iterdir() if p.suffix in (".safetensors", ".bin", ".json") and p.is_file())
    stamp = json.dumps([[str(p.resolve()), p.stat().st_size, p.stat().st_mtime_ns] for p in files])
    memo = cache / "digests" / (hashlib.sha256(stamp.encode()).hexdigest()[:32] + ".txt")
    if memo.is_file():
        return memo.read_text().strip()
    h = hashlib.sha256()
    for p in files:
        h.update(p.name.encode() + b"\0")
        with p.open("rb") as f:
            while chunk := f.read(1 << 22):
                h.update(chunk)
    digest = h.hexdigest()
    _atomic_write(memo, digest)
    return digest


def export_key(digest: str, *, dtype: str) -> str:
    """What a cached export depends on: checkpoint content, exporter versions, opset, shapes, dtype."""
    import torch
    import transformers

    parts = [digest, f"torch={torch.__version__}", f"transformers={transformers.__version__}",
             f"opset={OPSET}", SHAPE_POLICY, f"dtype={dtype}", f"revision={EXPORT_REVISION}"]
    return hashlib.sha256("|".join(parts).encode()).hexdigest()[:24]


class _Wrapper:
    """pixel_values -> predicted_depth as a plain nn.Module for the exporter."""

    @staticmethod
    def of(model: Any) -> Any:
        import torch

        class Wrapped(torch.nn.Module):
            def __init__(self) -> None:
                super().__init__()
                self.model = model

            def forward(self, pixel_values: Any) -> Any:
                return self.model(pixel_values=pixel_values).predicted_depth

        return Wrapped().eval()


@contextlib.contextmanager
def _symbolic_head_size(model: Any) -> Any:
    """While exporting, run the depth head without transformers' `int(patch_height * patch_size)`.

    `int()` on a symbolic size makes torch.export bake the sample's output size into the graph
    (every later shape would get the sample's height and width). This is the head's forward
    (DepthAnythingDepthEstimationHead, transformers 5.x) with the sizes left symbolic; the
    parity tests at several shapes hold it to transformers' own output.
    """
    from torch import nn

    head = getattr(model, "head", None)
    needed = ("conv1", "conv2", "conv3", "activation1", "activation2", "patch_size", "head_in_index", "max_depth")
    if head is None or not all(hasattr(head, a) for a in needed):
        raise BackendError(f"unexpected depth head {type(head).__name__}: cannot export a dynamic-shape graph")

    def forward(hidden_states: list[Any], patch_height: Any, patch_width: Any) -> Any:
        x = head.conv1(hidden_states[head.head_in_index])
        x = nn.functional.interpolate(
            x, (patch_height * head.patch_size, patch_width * head.patch_size), mode="bilinear", align_corners=True
        )
        x = head.conv3(head.activation1(head.conv2(x)))
        return (head.activation2(x) * head.max_depth).squeeze(dim=1)

    head.forward = forward  # an instance attribute shadows the class's forward ...
    try:
        yield
    finally:
        del head.forward  # ... and removing it restores transformers' own


def export_onnx(model: Any, dest: Path) -> Path:
    """Export `model` (fp32, CPU) to `dest` with dynamic batch, height and width."""
    import torch
    from torch.export import Dim

    sample = torch.zeros(_PARITY_SHAPE, dtype=torch.float32)
    dynamic = {"pixel_values": {0: Dim("batch", min=1, max=256), 2: 14 * Dim("h14", min=1, max=512),
                                3: 14 * Dim("w14", min=1, max=512)}}
    dest.parent.mkdir(parents=True, exist_ok=True)
    with torch.inference_mode(False), torch.no_grad(), _symbolic_head_size(model), _quiet("onnx_ir", "onnxscript"):
        program = torch.onnx.export(
            _Wrapper.of(model), (sample,), input_names=[_INPUT], output_names=[_OUTPUT],
            dynamic_shapes=dynamic, opset_version=OPSET, dynamo=True, optimize=True, verbose=False,
        )
    program.save(str(dest))
    return dest


def cached_onnx(model: Any, location: str, name: str, settings: RunnerSettings) -> Path:
    """The checkpoint's ONNX file, exported once per cache key (atomically: a folder renamed into place)."""
    cache = backend_cache(settings)
    key = export_key(checkpoint_digest(location, cache), dtype="float32")
    folder = cache / f"{name}-{key}"
    onnx_path = folder / "model.onnx"
    if onnx_path.is_file():
        return onnx_path
    try:
        cache.mkdir(parents=True, exist_ok=True)
        tmp = Path(tempfile.mkdtemp(prefix=f".{name}-", dir=cache))
        tmp.chmod(0o755)  # mkdtemp's 0700 would hide a shared cache from other users
    except OSError as exc:
        raise BackendError(f"no export of {name} in {cache} and cannot write one there ({exc}); "
                           f"set SPATIALFORGE_BACKEND_CACHE to a writable folder") from exc
    try:
        log.info("exporting %s to ONNX (once per checkpoint and toolchain) into %s", name, folder)
        export_onnx(_cpu_fp32(model), tmp / "model.onnx")
        (tmp / "key.json").write_text(json.dumps({"checkpoint": name, "key": key, "opset": OPSET, "shapes": SHAPE_POLICY}))
        try:
            os.replace(tmp, folder)
        except OSError:  # another process won the race: use its export
            if not onnx_path.is_file():
                raise
    except Exception as exc:
        if isinstance(exc, ModelLoadError):
            raise
        raise BackendError(f"ONNX export of {name} failed: {exc}") from exc
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return onnx_path


def _cpu_fp32(model: Any) -> Any:
    """The model itself when it is fp32 on CPU, else an fp32 CPU copy (the export is always fp32)."""
    import copy

    import torch

    first = next(model.parameters())
    if first.device.type == "cpu" and first.dtype == torch.float32:
        return model
    return copy.deepcopy(model).to("cpu", dtype=torch.float32).eval()


@contextlib.contextmanager
def _quiet(*loggers: str) -> Any:
    """The exporter's graph passes log every rewrite at INFO: keep them out of the runner's log."""
    saved = [(logging.getLogger(n), logging.getLogger(n).level) for n in loggers]
    for logger, _ in saved:
        logger.setLevel(logging.WARNING)
    try:
        yield
    finally:
        for logger, level in saved:
            logger.setLevel(level)


def _atomic_write(path: Path, text: str) -> None:
    """Write a small memo atomically; a read-only cache (pre-exported, mounted) just is not written."""
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=".tmp-")
        with os.fdopen(fd, "w") as f:
            f.write(text)
        os.replace(tmp, path)
    except OSError as exc:
        log.debug("cannot write %s (%s); it is recomputed next time", path, exc)


# --- parity and selection ---------------------------------------------------------------------


def relative_difference(candidate: np.ndarray, reference: np.ndarray) -> float:
    """max |candidate - reference| / max |reference| (0 when both are zero)."""
    peak = float(np.abs(reference).max())
    diff = float(np.abs(candidate.astype(np.float64) - reference.astype(np.float64)).max())
    return diff / peak if peak > 0 else diff


def parity_input() -> np.ndarray:
    rng = np.random.default_rng(1234)
    return rng.standard_normal(_PARITY_SHAPE).astype(np.float32)


def check_parity(backend: DepthBackend, reference: TorchBackend, marker: Path | None) -> float:
    """Compare with eager on a fixed input; remember a pass in `marker` so it runs once per cache."""
    if marker is not None and marker.is_file():
        return float(json.loads(marker.read_text())["relativeDifference"])
    x = parity_input()
    got = backend.forward(x).float().cpu().numpy()
    want = reference.forward(x).float().cpu().numpy()
    rel = relative_difference(got, want)
    limit = PARITY_RTOL_FP16 if reference.device.half else PARITY_RTOL
    if not np.isfinite(rel) or rel > limit:
        raise BackendError(f"backend {backend.name} differs from transformers by {rel:.2e} (limit {limit:.0e})")
    if marker is not None:
        _atomic_write(marker, json.dumps({"relativeDifference": rel, "limit": limit}))
    return rel


@dataclass(frozen=True, kw_only=True)
class Selected:
    backend: DepthBackend
    parity: float | None  # relative difference from eager; None for eager itself


def build_backend(name: str, *, model: Any, location: str, ckpt_name: str, device: DeviceChoice,
                  settings: RunnerSettings) -> Selected:
    """One named backend, exported and parity-checked; BackendError when it cannot run here."""
    eager = TorchBackend(model, device)
    if name == "torch":
        return Selected(backend=eager, parity=None)
    if name == "onnxruntime":
        _require("onnxruntime")
        if device.is_cuda:
            _ort_providers(device, Path(os.devnull))  # fail before exporting when ORT has no CUDA provider
    elif name == "openvino":
        _require("openvino")
        if device.is_cuda:
            raise BackendError("openvino runs on CPU only; the device is " + device.torch_device)
    else:
        raise BackendError(f"unknown depth backend {name!r}")
    onnx_path = cached_onnx(model, location, ckpt_name, settings)
    folder = onnx_path.parent
    try:
        backend: DepthBackend
        if name == "onnxruntime":
            backend = OnnxRuntimeBackend(onnx_path, device, trt_cache=folder / "tensorrt")
        else:
            backend = OpenVinoBackend(onnx_path, device, cache_dir=folder / "openvino")
    except BackendError:
        raise
    except Exception as exc:  # a runtime that cannot load the graph is a load error, not a crash
        raise BackendError(f"{name} cannot load {onnx_path}: {exc}") from exc
    dtype = "fp16" if device.half else "fp32"
    marker = folder / f"parity-{name}-{device.torch_device.split(':')[0]}-{dtype}-{_runtime_version(name)}.json"
    rel = check_parity(backend, eager, marker)
    return Selected(backend=backend, parity=rel)


def select_backend(*, model: Any, location: str, ckpt_name: str, device: DeviceChoice,
                   settings: RunnerSettings) -> Selected:
    """The backend the setting names, or with `auto` the first of the measured order that works here."""
    choice = backend_choice(settings)
    if choice != "auto":
        return build_backend(choice, model=model, location=location, ckpt_name=ckpt_name, device=device, settings=settings)
    for name in AUTO_ORDER_CUDA if device.is_cuda else AUTO_ORDER_CPU:
        try:
            return build_backend(name, model=model, location=location, ckpt_name=ckpt_name, device=device, settings=settings)
        except BackendError as exc:
            log.warning("depth backend %s not used: %s", name, exc)
    raise AssertionError("unreachable: torch always builds")


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
