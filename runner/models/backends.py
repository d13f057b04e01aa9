"""Depth model backends: eager PyTorch, ONNX Runtime and OpenVINO, all from the same checkpoint.

The ONNX graph they run is exported by export.py and cached by backend_cache.py; selection.py
checks parity and picks one. `SPATIALFORGE_DEPTH_BACKEND` (RunnerSettings.depth_backend) names
one of BACKENDS or INT8_BACKENDS, or `auto`: of the AUTO_ORDER_* candidates that are installed,
usable on the device and hold parity, the one a short timed pass on this machine found fastest
(timing.py; cached per CPU model, thread count and library versions).
"""

from __future__ import annotations

import threading
from pathlib import Path
from typing import Any, Protocol

import numpy as np

from spatialforge.crds.constants import ENV_DEPTH_BACKEND
from spatialforge.runner.devices import DeviceChoice
from spatialforge.runner.errors import ModelLoadError
from spatialforge.runner.settings import RunnerSettings

BACKENDS = ("torch", "onnxruntime", "openvino")  # fp32: parity with transformers within 1e-3
# int8 weights (ONNX Runtime dynamic quantization): faster on CPU, depth within 1 % AbsRel of fp32.
# Opt-in only: `auto` never picks one, since parity matters more than speed by default.
INT8_BACKENDS = ("onnx-int8",)
# The candidates `auto` times on each device (not a ranking: timing.py measures which is fastest;
# the order only breaks ties). On CUDA only ONNX Runtime's TensorRT/CUDA providers and torch apply.
AUTO_ORDER_CPU = ("torch", "onnxruntime", "openvino")
AUTO_ORDER_CUDA = ("torch", "onnxruntime")
INPUT_NAME, OUTPUT_NAME = "pixel_values", "predicted_depth"  # the exported graph's input and output


class BackendError(ModelLoadError):
    """A backend cannot run here (not installed, wrong device) or does not hold parity."""


class DepthBackend(Protocol):
    """Runs the depth network: (B, 3, h, w) float32 normalised pixels -> (B, h, w) float32 tensor."""

    name: str

    def forward(self, batch: np.ndarray) -> Any: ...


def backend_choice(settings: RunnerSettings) -> str:
    choice = (settings.depth_backend or "auto").strip().lower()
    if choice != "auto" and choice not in BACKENDS + INT8_BACKENDS:
        raise ModelLoadError(
            f"{ENV_DEPTH_BACKEND}={choice!r}: expected auto or one of {', '.join(BACKENDS + INT8_BACKENDS)}"
        )
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
    """ONNX Runtime: CPU provider here; TensorRT then CUDA providers in the GPU image.

    The same class runs the int8 graph (`onnx-int8`, CPU only): only the file and the name differ.
    """

    name = "onnxruntime"

    def __init__(self, onnx_path: Path, device: DeviceChoice, *, trt_cache: Path, name: str = "onnxruntime") -> None:
        import onnxruntime as ort

        self.name = name
        opts = ort.SessionOptions()
        opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        self.device = device
        self.session = ort.InferenceSession(str(onnx_path), opts, providers=ort_providers(device, trt_cache))

    def forward(self, batch: np.ndarray) -> Any:
        import torch

        out = self.session.run([OUTPUT_NAME], {INPUT_NAME: np.ascontiguousarray(batch, dtype=np.float32)})[0]
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


def ort_providers(device: DeviceChoice, trt_cache: Path) -> list[Any]:
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
            "trt_profile_min_shapes": f"{INPUT_NAME}:1x3x14x14",
            "trt_profile_opt_shapes": f"{INPUT_NAME}:8x3x518x686",
            "trt_profile_max_shapes": f"{INPUT_NAME}:16x3x1036x1036",
        }))
    if "CUDAExecutionProvider" in available:
        providers.append(("CUDAExecutionProvider", {"device_id": index}))
    if not providers:
        raise BackendError(f"onnxruntime has no CUDA provider here (has {sorted(available)}); install onnxruntime-gpu")
    return [*providers, "CPUExecutionProvider"]
