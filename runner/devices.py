"""Device choice for torch and open3d: CUDA when present (or asked for), else CPU."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any


@dataclass(frozen=True, kw_only=True)
class DeviceChoice:
    """Where the depth model and fusion run, and in which precision."""

    torch_device: str
    open3d_device: str
    half: bool

    @property
    def is_cuda(self) -> bool:
        return self.torch_device.startswith("cuda")

    @property
    def torch_dtype(self) -> Any:
        import torch

        return torch.float16 if self.half else torch.float32


def choose_device(preference: str | None = None, *, fp16: bool = True) -> DeviceChoice:
    """`preference` (RunnerSettings.device): "auto" (default), "cpu", "cuda" or "cuda:N".

    fp16 on CUDA when `fp16` (RunnerSettings.fp16); always fp32 on CPU (bf16 was slower there).
    """
    import torch

    return device_choice(preference, fp16=fp16, cuda_available=torch.cuda.is_available())


def device_choice(preference: str | None, *, fp16: bool, cuda_available: bool) -> DeviceChoice:
    """The decision of `choose_device`, without asking torch."""
    pref = (preference or "auto").lower()
    if pref == "auto":
        pref = "cuda:0" if cuda_available else "cpu"
    if pref == "cuda":
        pref = "cuda:0"
    if pref.startswith("cuda") and not cuda_available:
        raise RuntimeError(f"device {pref} requested but CUDA is not available")
    cuda = pref.startswith("cuda")
    return DeviceChoice(torch_device=pref, open3d_device=_open3d_device(pref), half=cuda and fp16)


def _open3d_device(torch_device: str) -> str:
    """open3d's device string; CPU when open3d was built without CUDA."""
    if not torch_device.startswith("cuda"):
        return "CPU:0"
    try:
        import open3d as o3d

        if o3d.core.cuda.is_available():
            index = torch_device.split(":", 1)[1] if ":" in torch_device else "0"
            return f"CUDA:{index}"
    except Exception:  # noqa: BLE001 - open3d missing CUDA support is not an error
        pass
    return "CPU:0"
