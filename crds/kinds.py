"""The kinds registry: every fact about a kind, in one entry, read by every component.

Operator, runner, front end, the CRD generator and the chart's RBAC rules all look a kind up
here instead of spelling out its plural, short names or Job-name code themselves. KINDS are the
kinds of work (each run by a Job); DEPTH_POOL is capacity (a Deployment and a Service);
ALL_KINDS is every CRD the operator needs served.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from spatialforge.crds.constants import GROUP
from spatialforge.crds.v1alpha1 import depthpool as dp
from spatialforge.crds.v1alpha1.common import KubeResource, Lifecycle
from spatialforge.crds.v1alpha1.depthbatch import DepthBatch, DepthBatchSpec
from spatialforge.crds.v1alpha1.reconstructionjob import ReconstructionJob, ReconstructionJobSpec


@dataclass(frozen=True)
class CustomKind:
    """One custom resource kind: its names and its model."""

    kind: str
    plural: str
    singular: str
    short_names: tuple[str, ...]
    model: type[KubeResource]

    @property
    def crd_name(self) -> str:
        return f"{self.plural}.{GROUP}"

    @property
    def status_resource(self) -> str:
        """The status subresource, as RBAC rules and admission policies name it."""
        return f"{self.plural}/status"


@dataclass(frozen=True)
class PoolKind(CustomKind):
    """DepthPool: also has the scale subresource."""

    @property
    def scale_resource(self) -> str:
        return f"{self.plural}/scale"


@dataclass(frozen=True)
class Kind(CustomKind):
    """One kind of work, run by a Job."""

    code: str
    """Two letters: the child Job's name suffix (`<name>-<code><hash>`) and the front end's id prefix."""
    main_input_jsonpath: str
    """The printer column showing the main input."""
    spec_model: type[Lifecycle]

    def parse(self, data: Mapping[str, Any], *, context: dict[str, Any] | None = None) -> KubeResource:
        """Validate a whole resource dict with this kind's model."""
        return self.model.model_validate(data, context=context)


DEPTH_BATCH = Kind(
    kind="DepthBatch",
    plural="depthbatches",
    singular="depthbatch",
    short_names=("db", "depth"),
    code="db",
    main_input_jsonpath=".spec.inputs[0]",
    model=DepthBatch,
    spec_model=DepthBatchSpec,
)
RECONSTRUCTION_JOB = Kind(
    kind="ReconstructionJob",
    plural="reconstructionjobs",
    singular="reconstructionjob",
    short_names=("rj", "recon"),
    code="rj",
    main_input_jsonpath=".spec.input",
    model=ReconstructionJob,
    spec_model=ReconstructionJobSpec,
)

DEPTH_POOL = PoolKind(
    kind=dp.KIND,
    plural=dp.PLURAL,
    singular=dp.SINGULAR,
    short_names=dp.SHORT_NAMES,
    model=dp.DepthPool,
)

KINDS: tuple[Kind, ...] = (DEPTH_BATCH, RECONSTRUCTION_JOB)
ALL_KINDS: tuple[CustomKind, ...] = (*KINDS, DEPTH_POOL)
BY_KIND: Mapping[str, Kind] = {k.kind: k for k in KINDS}
BY_PLURAL: Mapping[str, Kind] = {k.plural: k for k in KINDS}
BY_CODE: Mapping[str, Kind] = {k.code: k for k in KINDS}
PLURALS: tuple[str, ...] = tuple(k.plural for k in KINDS)
STATUS_RESOURCES: tuple[str, ...] = tuple(k.status_resource for k in KINDS)


def kind_of(kind: str) -> Kind:
    """The registry entry of `kind` (e.g. "DepthBatch"); ValueError naming the known kinds."""
    try:
        return BY_KIND[kind]
    except KeyError:
        raise ValueError(f"unknown kind {kind!r} (expected one of {', '.join(BY_KIND)})") from None
