"""DepthBatch: monocular depth for a set of images."""

from __future__ import annotations

import enum
from typing import Literal

from pydantic import Field

from spatialforge.crds.v1alpha1.common import (
    CRDModel,
    DepthModel,
    Intrinsics,
    KubeResource,
    Lifecycle,
    ObjectURI,
    Placement,
    immutable,
)


# The names a prefix input contributes (the runner reads them; the front end charges one unit each).
IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".webp", ".tif", ".tiff", ".heic", ".heif", ".avif")


def is_image_name(name: str) -> bool:
    return name.lower().endswith(IMAGE_EXTENSIONS)


class DepthFormat(str, enum.Enum):
    png16 = "png16"  # 16-bit PNG: depth = value x the manifest's png16Scale (metric: 1 mm indoor, 2 mm outdoor).
    npy = "npy"  # float32 NumPy array, metres (metric) or relative units.
    preview = "preview"  # Colour JPEG (inferno colormap, near is bright): for looking at, not measuring.


class OnInvalidImage(str, enum.Enum):
    fail = "Fail"  # The first invalid image fails the resource (InvalidInput, never retried).
    skip = "Skip"  # Invalid images are skipped, counted in status and listed in the manifest.


class DepthOutput(CRDModel):
    """Where results go: `<uri>/<namespace>/<name>/...`, manifest written last."""

    uri: ObjectURI
    formats: list[DepthFormat] = Field(
        default_factory=lambda: [DepthFormat.png16, DepthFormat.npy, DepthFormat.preview], min_length=1,
        max_length=len(DepthFormat))
    """What to write per image: any of png16, npy and preview (a colour JPEG); default all three."""
    max_pixels: int = Field(default=4_194_304, ge=1, le=200_000_000)
    """Depth maps are written at the input's size up to this many pixels (default 2048 x 2048), and
    downscaled to it (aspect kept) above. Set it to maxImagePixels to always get the input's size;
    the runner's memory grows with it."""


class DepthBatchSpec(Lifecycle):
    """Desired state of a DepthBatch."""

    inputs: list[ObjectURI] = Field(min_length=1, max_length=10000, json_schema_extra=immutable("inputs"))
    """Images (JPEG, PNG, WebP, TIFF, HEIC, AVIF) as s3:// objects, or prefixes ending in "/"."""
    output: DepthOutput = Field(json_schema_extra=immutable("output"))
    model: DepthModel = Field(default_factory=DepthModel, json_schema_extra=immutable("model"))
    intrinsics: Intrinsics | None = None
    """Camera intrinsics used for every image (for the manifest's focal length)."""
    parallelism: int = Field(default=1, ge=1, le=64)
    """Shards of the inputs, run as an Indexed Job with one pod per shard."""
    batch_size: int = Field(default=4, ge=1, le=64)
    """Images per forward pass."""
    max_image_pixels: int = Field(default=64_000_000, ge=1, le=200_000_000)
    """Larger images are invalid input (the default takes 48 and 50 MP phone photos)."""
    max_image_bytes: int = Field(default=50 * 1024 * 1024, ge=1, le=1024 * 1024 * 1024)
    """Larger files are invalid input."""
    placement: Placement = Field(default_factory=Placement)
    on_invalid_image: OnInvalidImage = Field(default=OnInvalidImage.fail, json_schema_extra=immutable("onInvalidImage"))
    """Fail: an unreadable, oversized or non-image input fails the resource. Skip: it is skipped and counted."""

    @property
    def shards(self) -> int:
        """Runner pods that run at once: one per shard of the inputs."""
        return self.parallelism

    @property
    def gpu_demand(self) -> int:
        """GPUs held while admitted: GPUs per pod x pods at once."""
        return self.placement.gpus * self.shards


class DepthBatch(KubeResource):
    """A DepthBatch custom resource."""

    kind: Literal["DepthBatch"] = "DepthBatch"
    spec: DepthBatchSpec
