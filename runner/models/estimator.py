"""DepthEstimator: a loaded Depth Anything V2 plus DPT preprocessing that runs in worker threads.

Load once per process (`DepthEstimator.load`) and pass it in. `preprocess` is plain numpy/cv2
(thread-safe, so decode threads can run it while the model runs); `predict` runs one batch.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from spatialforge.crds.v1alpha1.common import DepthModel
from spatialforge.runner.devices import DeviceChoice, choose_device
from spatialforge.runner.errors import ModelLoadError
from spatialforge.runner.models.backends import DepthBackend, TorchBackend
from spatialforge.runner.models.registry import Checkpoint, check_allowed, forget_download, resolve_weights
from spatialforge.runner.models.selection import select_backend
from spatialforge.runner.settings import RunnerSettings


@dataclass(frozen=True, kw_only=True)
class Preprocessing:
    """DPT resize/normalise settings, read from the checkpoint's image processor."""

    height: int = 518
    width: int = 518
    keep_aspect_ratio: bool = True
    multiple: int = 14
    mean: tuple[float, float, float] = (0.485, 0.456, 0.406)
    std: tuple[float, float, float] = (0.229, 0.224, 0.225)

    @classmethod
    def from_processor(cls, proc: Any) -> Preprocessing:
        size = getattr(proc, "size", None) or {}
        return cls(
            height=int(size.get("height", 518)),
            width=int(size.get("width", 518)),
            keep_aspect_ratio=bool(getattr(proc, "keep_aspect_ratio", True)),
            multiple=int(getattr(proc, "ensure_multiple_of", 14) or 1),
            mean=tuple(float(x) for x in proc.image_mean),  # type: ignore[arg-type]
            std=tuple(float(x) for x in proc.image_std),  # type: ignore[arg-type]
        )

    def output_size(self, height: int, width: int) -> tuple[int, int]:
        """transformers' DPT `get_resize_output_image_size`: scale as little as possible."""
        scale_h, scale_w = self.height / height, self.width / width
        if self.keep_aspect_ratio:
            if abs(1 - scale_w) < abs(1 - scale_h):
                scale_h = scale_w
            else:
                scale_w = scale_h
        return _multiple_of(scale_h * height, self.multiple), _multiple_of(scale_w * width, self.multiple)

    def __call__(self, rgb: np.ndarray) -> np.ndarray:
        """(H, W, 3) uint8 -> (3, h, w) float32, resized (Pillow bicubic, as the processor) and normalised."""
        from PIL import Image

        h, w = self.output_size(rgb.shape[0], rgb.shape[1])
        img = Image.fromarray(rgb)
        if (img.width, img.height) != (w, h):
            img = img.resize((w, h), Image.Resampling.BICUBIC)
        resized = np.asarray(img, dtype=np.float32)
        resized = resized * (1.0 / 255.0)
        resized -= np.asarray(self.mean, dtype=np.float32)
        resized /= np.asarray(self.std, dtype=np.float32)
        return np.ascontiguousarray(resized.transpose(2, 0, 1))


def _multiple_of(value: float, multiple: int) -> int:
    out = round(value / multiple) * multiple
    if out < multiple:
        out = math.ceil(value / multiple) * multiple
    return int(max(out, multiple))


class DepthEstimator:
    """A Depth Anything model on one device; metric models predict metres, relative ones disparity."""

    def __init__(
        self,
        model: Any,
        preprocessing: Preprocessing,
        device: DeviceChoice,
        *,
        checkpoint: Checkpoint,
        backend: DepthBackend | None = None,
        parity: float | None = None,
        max_batch: int | None = None,
    ) -> None:
        self.model = model
        self.preprocess = preprocessing
        self.device = device
        self.checkpoint = checkpoint
        self.backend: DepthBackend = backend or TorchBackend(model, device)
        self.parity = parity  # relative difference of the backend from eager transformers
        self.max_batch = max_batch  # 1 when auto's timed pass found batching no faster per image here

    def batch_size(self, requested: int) -> int:
        """The batch to run: the spec's batchSize, capped by what the timed pass measured on this device."""
        return min(requested, self.max_batch) if self.max_batch else requested

    @property
    def metric(self) -> bool:
        return self.checkpoint.metric

    @classmethod
    def load(
        cls,
        spec_model: DepthModel,
        *,
        settings: RunnerSettings,
        device: DeviceChoice | None = None,
    ) -> DepthEstimator:
        """Check the licence, find the weights, load model and processor with transformers, then
        pick the backend (SPATIALFORGE_DEPTH_BACKEND; see models/selection.py)."""
        from transformers import AutoImageProcessor, AutoModelForDepthEstimation

        ckpt = Checkpoint.of(spec_model)
        check_allowed(ckpt, settings)
        location = resolve_weights(ckpt, settings)
        device = device or choose_device(settings.device, fp16=settings.fp16)
        try:
            processor = AutoImageProcessor.from_pretrained(location, local_files_only=not settings.hub_download)
            model = AutoModelForDepthEstimation.from_pretrained(
                location, dtype=device.torch_dtype, local_files_only=not settings.hub_download
            )
        except Exception as exc:  # noqa: BLE001 - SafetensorError, JSON and config errors are all a bad checkpoint
            forget_download(location)
            raise ModelLoadError(f"cannot load {ckpt.name} from {location}: {type(exc).__name__}: {exc}") from exc
        model = model.to(device.torch_device).eval()
        pre = Preprocessing.from_processor(processor)
        shape = (_multiple_of(pre.height, pre.multiple), _multiple_of(pre.width, pre.multiple))
        chosen = select_backend(model=model, location=location, ckpt_name=ckpt.name, device=device, settings=settings,
                                shape=shape)
        return cls(
            model, pre, device, checkpoint=ckpt, backend=chosen.backend, parity=chosen.parity,
            max_batch=chosen.measured.max_batch if chosen.measured else None,
        )

    def predict(self, pixels: Sequence[np.ndarray], sizes: Sequence[tuple[int, int]]) -> list[np.ndarray]:
        """Preprocessed (3, h, w) arrays -> depth (H, W) float32 at each original size.

        Arrays of the same shape share one forward pass; the result is upsampled on the device.
        """
        import torch
        import torch.nn.functional as F

        out: list[np.ndarray | None] = [None] * len(pixels)
        groups: dict[tuple[int, ...], list[int]] = {}
        for i, arr in enumerate(pixels):
            groups.setdefault(tuple(arr.shape), []).append(i)
        with torch.inference_mode():
            for idx in groups.values():
                pred = self.backend.forward(np.stack([pixels[i] for i in idx]))  # (B, h, w) float32
                pred = pred.unsqueeze(1)
                for j, i in enumerate(idx):
                    h, w = sizes[i]
                    up = F.interpolate(pred[j : j + 1], size=(h, w), mode="bicubic", align_corners=False)
                    out[i] = up[0, 0].clamp_min_(0).cpu().numpy()
        return [o for o in out if o is not None]

    def predict_rgb(self, images: Sequence[np.ndarray]) -> list[np.ndarray]:
        """Convenience: preprocess and predict in the calling thread."""
        return self.predict([self.preprocess(im) for im in images], [im.shape[:2] for im in images])
