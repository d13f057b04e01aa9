"""The depth server's own knobs (env `SPATIALFORGE_SERVE_*`; `spatialforge runner serve --help`).

Everything about the model, device, backend and weights is RunnerSettings, as for a batch run;
both are read by the same loader (runner/settings.py `EnvSettings.from_env`).
"""

from __future__ import annotations

from typing import Any

from pydantic import Field
from pydantic_settings import SettingsConfigDict

from spatialforge.crds.v1alpha1.common import ModelSize, ModelVariant
from spatialforge.crds.v1alpha1.depthbatch import DepthBatchSpec, DepthOutput
from spatialforge.runner.settings import EnvSettings


def _default(model: Any, field: str) -> Any:
    return model.model_fields[field].default


class ServeSettings(EnvSettings):
    """How the server listens, batches and bounds its queue (`ServeSettings.from_env(env, **cli_options)`)."""

    model_config = SettingsConfigDict(env_prefix="SPATIALFORGE_SERVE_")

    host: str = "0.0.0.0"  # noqa: S104 - a pod serves on its own interface
    """Address to listen on."""
    port: int = Field(default=8080, ge=0, le=65535)
    """Port (0: any free port; the chosen one is logged)."""
    model_size: ModelSize = ModelSize.small
    """Checkpoint size served (loaded once)."""
    model_variant: ModelVariant = ModelVariant.relative
    """Checkpoint variant served."""
    max_batch: int = Field(default=8, ge=1, le=64)
    """Largest batch one forward pass takes."""
    max_wait_ms: float = Field(default=10.0, ge=0, le=10_000)
    """How long the oldest queued request waits for others to join its batch."""
    max_queue: int = Field(default=64, ge=1, le=100_000)
    """Requests held at once (decoding, queued or running); beyond it: 503 with Retry-After."""
    decode_workers: int = Field(default=2, ge=1, le=64)
    """Threads that decode, preprocess and encode (the model has its own thread)."""
    drain_seconds: float = Field(default=30.0, ge=0)
    """On SIGTERM: how long in-flight requests may take to finish before the server exits."""
    max_image_bytes: int = Field(default=_default(DepthBatchSpec, "max_image_bytes"), ge=1)
    """Largest upload (a DepthBatch's default maxImageBytes)."""
    max_image_pixels: int = Field(default=_default(DepthBatchSpec, "max_image_pixels"), ge=1)
    """Largest image (a DepthBatch's default maxImagePixels)."""
    max_output_pixels: int = Field(default=_default(DepthOutput, "max_pixels"), ge=1)
    """Largest depth map returned (a DepthBatch's default output.maxPixels)."""
