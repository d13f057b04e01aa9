"""ONNX export of a depth checkpoint: one graph with a dynamic batch, height and width.

Heights and widths are multiples of 14 (the patch size). backend_cache.py keys each export by
the checkpoint's content and the constants below, so a change to what export_onnx writes
bumps EXPORT_REVISION.
"""

from __future__ import annotations

import contextlib
import copy
import logging
from pathlib import Path
from typing import Any

from spatialforge.runner.models.backends import INPUT_NAME, OUTPUT_NAME, BackendError

OPSET = 18
SHAPE_POLICY = "dynamic-batch,h=14k,w=14k"  # one graph for every batch size and aspect ratio
EXPORT_REVISION = 2  # bump when export_onnx changes what it writes: old cache entries are then ignored
SAMPLE_SHAPE = (2, 3, 14 * 19, 14 * 25)  # batch > 1 and h != w, so no dimension is specialised


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

    sample = torch.zeros(SAMPLE_SHAPE, dtype=torch.float32)
    dynamic = {"pixel_values": {0: Dim("batch", min=1, max=256), 2: 14 * Dim("h14", min=1, max=512),
                                3: 14 * Dim("w14", min=1, max=512)}}
    dest.parent.mkdir(parents=True, exist_ok=True)
    with torch.inference_mode(False), torch.no_grad(), _symbolic_head_size(model), _quiet("onnx_ir", "onnxscript"):
        program = torch.onnx.export(
            _Wrapper.of(model), (sample,), input_names=[INPUT_NAME], output_names=[OUTPUT_NAME],
            dynamic_shapes=dynamic, opset_version=OPSET, dynamo=True, optimize=True, verbose=False,
        )
    program.save(str(dest))
    return dest


def cpu_fp32(model: Any) -> Any:
    """The model itself when it is fp32 on CPU, else an fp32 CPU copy (the export is always fp32)."""
    import torch

    first = next(model.parameters())
    if first.device.type == "cpu" and first.dtype == torch.float32:
        return model
    return copy.deepcopy(model).to("cpu", dtype=torch.float32).eval()


def quantize_int8(src: Path, dest: Path) -> Path:
    """ONNX Runtime dynamic quantization: int8 per-channel weights for the ViT's weight MatMuls only.

    No calibration data is needed (ranges are taken per call), so the int8 graph is derived from
    the fp32 export alone. The DPT neck and head convolutions stay fp32: quantizing them too put
    the tiny model at ~10 % AbsRel, MatMuls alone at ~0.13 %. selection.py holds the graph to
    INT8_ABSREL of transformers before it is used.
    """
    from onnxruntime.quantization import QuantType, quantize_dynamic

    with _quiet("root", at=logging.ERROR):  # "consider pre-processing" advice at WARNING on every call
        quantize_dynamic(str(src), str(dest), weight_type=QuantType.QInt8, per_channel=True,
                         op_types_to_quantize=["MatMul"], extra_options={"MatMulConstBOnly": True})
    return dest


@contextlib.contextmanager
def _quiet(*loggers: str, at: int = logging.WARNING) -> Any:
    """The exporter's graph passes log every rewrite at INFO: keep them out of the runner's log."""
    saved = [(logging.getLogger(n), logging.getLogger(n).level) for n in loggers]
    for logger, _ in saved:
        logger.setLevel(at)
    try:
        yield
    finally:
        for logger, level in saved:
            logger.setLevel(level)
