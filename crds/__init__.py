"""The SpatialForge custom resources: one pydantic model per kind, the single source of truth.

The operator, the runner and the REST front end import these models; the CRD YAML in this
folder is generated from them (`spatialforge crds generate`) and never edited by hand.
"""

from spatialforge.crds.constants import API_VERSION, GROUP, VERSION
from spatialforge.crds.v1alpha1 import (
    DepthBatch,
    DepthBatchSpec,
    ReconstructionJob,
    ReconstructionJobSpec,
    ResourceStatus,
)

KINDS = (DepthBatch, ReconstructionJob)

__all__ = [
    "API_VERSION",
    "GROUP",
    "KINDS",
    "VERSION",
    "DepthBatch",
    "DepthBatchSpec",
    "ReconstructionJob",
    "ReconstructionJobSpec",
    "ResourceStatus",
]
