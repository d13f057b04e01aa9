"""spatialforge.io/v1alpha1."""

from spatialforge.crds.v1alpha1.common import (
    Condition,
    DepthModel,
    Intrinsics,
    Phase,
    Placement,
    Progress,
    ResourceStatus,
)
from spatialforge.crds.v1alpha1.depthbatch import DepthBatch, DepthBatchSpec, DepthOutput
from spatialforge.crds.v1alpha1.reconstructionjob import (
    QualityPreset,
    ReconstructionJob,
    ReconstructionJobSpec,
    ReconstructionOutput,
)

__all__ = [
    "Condition",
    "DepthBatch",
    "DepthBatchSpec",
    "DepthModel",
    "DepthOutput",
    "Intrinsics",
    "Phase",
    "Placement",
    "Progress",
    "QualityPreset",
    "ReconstructionJob",
    "ReconstructionJobSpec",
    "ReconstructionOutput",
    "ResourceStatus",
]
