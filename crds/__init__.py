"""The SpatialForge custom resources: one pydantic model per kind, the single source of truth.

The operator, the runner and the REST front end import these models and look each kind up in
`kinds.KINDS`; the CRD YAML in this folder is generated from them (`spatialforge crds generate`)
and never edited by hand.
"""

from spatialforge.crds.constants import API_VERSION, GROUP, VERSION
from spatialforge.crds.kinds import BY_KIND, KINDS, Kind, kind_of
from spatialforge.crds.v1alpha1 import (
    DepthBatch,
    DepthBatchSpec,
    ReconstructionJob,
    ReconstructionJobSpec,
    ResourceStatus,
)

__all__ = [
    "API_VERSION",
    "BY_KIND",
    "GROUP",
    "KINDS",
    "Kind",
    "VERSION",
    "kind_of",
    "DepthBatch",
    "DepthBatchSpec",
    "ReconstructionJob",
    "ReconstructionJobSpec",
    "ResourceStatus",
]
