"""The timed pass: each usable backend runs a few forwards at the configured size, once per key.

A fixed order measured on one machine went wrong (an OpenVINO lead measured under heavy load was
20 % behind torch on a quiet machine), so `auto` measures where the runner runs. The key is the
CPU model, torch's thread count, the device and dtype, the checkpoint's content, the input size
and the library versions; the figures and the choice are written to the backend cache
(`timings/<checkpoint>-<key>.json`), so later starts with the same key read them instead.
A named backend is timed too (one candidate): whether batching pays is measured either way.
"""

from __future__ import annotations

import contextlib
import hashlib
import importlib.metadata
import json
import os
import platform
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np

from spatialforge.runner.devices import DeviceChoice
from spatialforge.runner.models.backends import DepthBackend

TIMED_FORWARDS = 2  # after one warm-up forward; the best counts (a noisy neighbour only slows)
BATCH_PROBE = 2  # the chosen backend is also timed at this batch: is batching any faster per image?
BATCH_GAIN = 0.95  # batching is kept only when it is at least 5 % faster per image
TIMING_REVISION = 1  # bump when what the pass measures changes: older records are then ignored
_LIBRARIES = ("torch", "transformers", "onnxruntime", "openvino", "numpy")


@dataclass(frozen=True, kw_only=True)
class Timing:
    """One timed pass: best ms per image at batch 1 for each backend that built, and the choice."""

    key: str
    machine: dict[str, object]
    ms_per_image: dict[str, float]
    chosen: str
    batch_probe: int
    batch_ms_per_image: float | None  # the chosen backend at batch_probe, per image
    max_batch: int | None  # 1 when batching did not pay; None: the spec's batchSize decides
    load_average: float  # 1-minute load when measured (figures under load are not a ranking to trust far)

    def to_json(self) -> str:
        return json.dumps(asdict(self), indent=1, sort_keys=True)


def cpu_model() -> str:
    """The CPU's model name (/proc/cpuinfo), else what platform reports."""
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.lower().startswith("model name"):
                return line.split(":", 1)[1].strip()
    return platform.processor() or platform.machine()


def load_average() -> float:
    with contextlib.suppress(OSError, ValueError, IndexError):
        return float(Path("/proc/loadavg").read_text().split()[0])
    return -1.0


def machine(*, device: DeviceChoice, digest: str, shape: tuple[int, int], candidates: tuple[str, ...]) -> dict[str, object]:
    """What the timing depends on; its hash is the cache key."""
    import torch

    versions = {}
    for lib in _LIBRARIES:
        try:
            versions[lib] = importlib.metadata.version(lib)
        except importlib.metadata.PackageNotFoundError:
            versions[lib] = "absent"
    gpu = torch.cuda.get_device_name(device.torch_device) if device.is_cuda else None
    return {"cpu": cpu_model(), "threads": torch.get_num_threads(), "device": device.torch_device, "gpu": gpu,
            "dtype": "fp16" if device.half else "fp32", "checkpoint": digest, "shape": list(shape),
            "versions": versions, "candidates": list(candidates), "revision": TIMING_REVISION}


def cores() -> int:
    return os.cpu_count() or 1


def measured_under_load(record: Timing) -> bool:
    """Whether `record` was taken with more runnable work than cores: provisional, timed again."""
    return record.load_average > cores()


def key_of(machine_parts: dict[str, object]) -> str:
    return hashlib.sha256(json.dumps(machine_parts, sort_keys=True).encode()).hexdigest()[:24]


def timing_path(cache: Path, ckpt_name: str, key: str) -> Path:
    return cache / "timings" / f"{ckpt_name}-{key}.json"


def read_timing(path: Path) -> Timing | None:
    """The cached record, or None when there is none or it cannot be read (then the pass runs again)."""
    try:
        return Timing(**json.loads(path.read_text()))
    except (OSError, ValueError, TypeError):
        return None


def seconds_per_forward(backend: DepthBackend, x: np.ndarray, forwards: int = TIMED_FORWARDS) -> float:
    """Best wall time of `forwards` forwards of `x`, after one untimed warm-up."""
    _sync(backend.forward(x))
    best = float("inf")
    for _ in range(forwards):
        t0 = time.perf_counter()
        _sync(backend.forward(x))
        best = min(best, time.perf_counter() - t0)
    return best


def timing_input(shape: tuple[int, int], batch: int) -> np.ndarray:
    rng = np.random.default_rng(99)
    return rng.standard_normal((batch, 3, *shape)).astype(np.float32)


def _sync(out: object) -> None:
    """Wait for the device: a CUDA forward returns before the work is done."""
    import torch

    if isinstance(out, torch.Tensor) and out.is_cuda:
        torch.cuda.synchronize(out.device)
