"""ReconstructionJob: a video or a folder of frames becomes a coloured 3D model."""

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
    ModelVariant,
    ObjectURI,
    Placement,
    immutable,
)


class QualityPreset(str, enum.Enum):
    draft = "draft"  # At most 30 keyframes.
    standard = "standard"  # At most 100 keyframes.
    high = "high"  # At most 200 keyframes.

    @property
    def max_keyframes(self) -> int:
        return {"draft": 30, "standard": 100, "high": 200}[self.value]


class ReconstructionFormat(str, enum.Enum):
    pointcloud = "pointcloud"  # Coloured point cloud, PLY.
    mesh = "mesh"  # Coloured triangle mesh, PLY; also a web-sized copy, mesh.web.ply.
    trajectory = "trajectory"  # Metric camera poses with intrinsics, JSON; alone, only poses are computed.
    floorplan = "floorplan"  # Rooms as polygons: SVG, DXF, GeoJSON; area and room count in the manifest.


DEFAULT_FORMATS = (ReconstructionFormat.pointcloud, ReconstructionFormat.mesh, ReconstructionFormat.trajectory)


class ReconstructionOutput(CRDModel):
    """Where results go: `<uri>/<namespace>/<name>/...`, manifest written last."""

    uri: ObjectURI
    formats: list[ReconstructionFormat] = Field(
        default_factory=lambda: list(DEFAULT_FORMATS), min_length=1, max_length=len(ReconstructionFormat)
    )
    """What to produce: any of trajectory, pointcloud, mesh, floorplan (default: the first three)."""
    web_mesh_triangles: int = Field(default=200_000, ge=1_000, le=5_000_000)
    """With a mesh, also mesh.web.ply (outputs.webMesh) for browsers: at most this many triangles."""


def _metric_model() -> DepthModel:
    return DepthModel(variant=ModelVariant.metric_indoor)


class ReconstructionJobSpec(Lifecycle):
    """Desired state of a ReconstructionJob."""

    input: ObjectURI = Field(json_schema_extra=immutable("input"))
    """A video (MP4, MOV, WebM) object, or a prefix of frames ending in "/"."""
    output: ReconstructionOutput = Field(json_schema_extra=immutable("output"))
    quality: QualityPreset = Field(default=QualityPreset.standard, json_schema_extra=immutable("quality"))
    """Keyframe cap and fusion resolution."""
    model: DepthModel = Field(default_factory=_metric_model, json_schema_extra=immutable("model"))
    """Depth model; a metric variant gives the reconstruction its scale."""
    intrinsics: Intrinsics | None = None
    voxel_size: float | None = Field(default=None, gt=0.0005, le=0.5)
    """TSDF voxel size in metres; the preset chooses when absent."""
    depth_max: float = Field(default=10.0, gt=0.1, le=100.0)
    """Depth beyond this (metres) is ignored in fusion."""
    scale_frames: int | None = Field(default=None, ge=0, le=1000)
    """With a metric model, frames between the keyframes that also get depth, only to vote on
    the global scale (each costs one depth inference): at most the preset's count (draft 100,
    standard 500, high 1000), which is also the default; 0 leaves the scale to the keyframes."""
    placement: Placement = Field(default_factory=Placement)

    @property
    def shards(self) -> int:
        """Runner pods that run at once: a reconstruction is one pod."""
        return 1

    @property
    def gpu_demand(self) -> int:
        """GPUs held while admitted: GPUs per pod x pods at once."""
        return self.placement.gpus * self.shards


class ReconstructionJob(KubeResource):
    """A ReconstructionJob custom resource."""

    kind: Literal["ReconstructionJob"] = "ReconstructionJob"
    spec: ReconstructionJobSpec
