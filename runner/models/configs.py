"""Depth Anything V2 configurations built offline from the real transformers config classes."""

from __future__ import annotations

from typing import Any

from spatialforge.crds.v1alpha1.common import ModelVariant
from spatialforge.runner.models.registry import METRIC_MAX_DEPTH


def _head(variant: ModelVariant) -> dict[str, Any]:
    if variant == ModelVariant.relative:
        return {"depth_estimation_type": "relative"}
    return {"depth_estimation_type": "metric", "max_depth": METRIC_MAX_DEPTH[variant]}


def tiny_config(variant: ModelVariant = ModelVariant.relative) -> Any:
    """A ~0.7 MB Depth Anything: same code path as the real one, for tests and demos."""
    from transformers import DepthAnythingConfig, Dinov2Config

    backbone = Dinov2Config(
        hidden_size=32,
        num_hidden_layers=4,
        num_attention_heads=2,
        intermediate_size=64,
        patch_size=14,
        image_size=518,
        out_indices=[1, 2, 3, 4],
        reshape_hidden_states=False,
    )
    return DepthAnythingConfig(
        backbone_config=backbone,
        reassemble_hidden_size=32,
        reassemble_factors=[4, 2, 1, 0.5],
        neck_hidden_sizes=[8, 16, 32, 32],
        fusion_hidden_size=16,
        head_hidden_size=8,
        patch_size=14,
        **_head(variant),
    )


def v2_small_config(variant: ModelVariant = ModelVariant.relative) -> Any:
    """The published Depth-Anything-V2-Small architecture (~24.8 M parameters)."""
    from transformers import DepthAnythingConfig, Dinov2Config

    backbone = Dinov2Config(
        hidden_size=384,
        num_hidden_layers=12,
        num_attention_heads=6,
        mlp_ratio=4,
        patch_size=14,
        image_size=518,
        layerscale_value=1.0,
        out_indices=[3, 6, 9, 12],
        reshape_hidden_states=False,
    )
    return DepthAnythingConfig(
        backbone_config=backbone,
        reassemble_hidden_size=384,
        reassemble_factors=[4, 2, 1, 0.5],
        neck_hidden_sizes=[48, 96, 192, 384],
        fusion_hidden_size=64,
        head_hidden_size=32,
        head_in_index=-1,
        patch_size=14,
        **_head(variant),
    )


def image_processor(size: int = 518) -> Any:
    """The DPT image processor settings Depth Anything V2 ships with."""
    from transformers import DPTImageProcessor

    return DPTImageProcessor(
        do_resize=True,
        size={"height": size, "width": size},
        keep_aspect_ratio=True,
        ensure_multiple_of=14,
        resample=3,  # bicubic
        do_rescale=True,
        rescale_factor=1 / 255,
        do_normalize=True,
        image_mean=[0.485, 0.456, 0.406],
        image_std=[0.229, 0.224, 0.225],
        do_pad=False,
    )


def save_random(config: Any, outdir: str, *, processor_size: int = 518, seed: int = 0) -> str:
    """Initialise a model with random weights from `config` and save it with its processor."""
    import torch
    from transformers import DepthAnythingForDepthEstimation

    torch.manual_seed(seed)
    model = DepthAnythingForDepthEstimation(config).eval()
    model.save_pretrained(outdir)
    image_processor(processor_size).save_pretrained(outdir)
    return outdir
