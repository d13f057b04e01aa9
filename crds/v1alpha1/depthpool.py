"""DepthPool: warm depth servers (runner serve) the platform owns, for synchronous depth.

Not a kind of work like DepthBatch: a pool has no lifecycle or phase, it is capacity. The
operator reconciles it into a Deployment and a Service; its GPUs count against the same budget
as Jobs. It has the `scale` subresource, so `kubectl scale` or a HorizontalPodAutoscaler set
`spec.replicas`, which the operator keeps within [minReplicas, maxReplicas] and the budget.
"""

from __future__ import annotations

from typing import Literal

from pydantic import Field, model_validator

from spatialforge.crds.v1alpha1.common import CRDModel, Condition, DepthModel, KubeResource, Toleration

# The kind's names (read through spatialforge.crds.kinds.DEPTH_POOL, which the CRD generator,
# the operator's start-up check and the chart's RBAC use; DepthPool is not in kinds.KINDS,
# the kinds of work each run by a Job).
KIND = "DepthPool"
PLURAL = "depthpools"
SINGULAR = "depthpool"
SHORT_NAMES = ("dp", "pool")

# Condition types and reasons of a pool.
READY = "Ready"  # True when every granted replica is ready.
BUDGET_LIMITED = "BudgetLimited"  # True when the budget gives fewer replicas than asked.
REASON_ALL_READY = "AllReplicasReady"
REASON_SCALING = "Scaling"  # replicas starting or stopping
REASON_NO_REPLICAS = "NoReplicas"
REASON_WITHIN_BUDGET = "WithinBudget"
REASON_CLUSTER_BUDGET = "ClusterBudget"  # gpuBudget in the quota ConfigMap leaves fewer GPUs
REASON_NAMESPACE_LIMIT = "NamespaceLimit"  # the namespace's spatialforge.io/gpu-limit leaves fewer
REASON_AWAITING_BUDGET = "AwaitingBudget"  # the operator has not read the budget yet
REASON_FORBIDDEN = "Forbidden"  # the operator may not create the pool's children in its namespace
HANDOFF_BACKOFF = "HandOffBackOff"  # True while the pool is skipped for hand-offs after failures
REASON_HANDOFFS_FAILING = "HandOffsFailing"  # N hand-offs in a row failed; skipped until backOffUntil
REASON_HANDOFFS_OK = "HandOffsAccepted"


class PoolPlacement(CRDModel):
    """Where the replicas run (their GPUs are gpusPerReplica)."""

    node_selector: dict[str, str] = Field(default_factory=dict)
    tolerations: list[Toleration] = Field(default_factory=list, max_length=16)
    priority_class_name: str | None = Field(default=None, max_length=253)


class DepthPoolSpec(CRDModel):
    """Desired state of a DepthPool."""

    model: DepthModel = Field(default_factory=DepthModel)
    """The checkpoint every replica serves (loaded once per replica)."""
    backend: str = Field(default="auto", pattern=r"^(auto|torch|onnxruntime|openvino|tensorrt)$")
    """Depth backend (the runner's SPATIALFORGE_DEPTH_BACKEND)."""
    gpus_per_replica: int = Field(default=1, ge=0, le=8)
    """GPUs (nvidia.com/gpu) per replica; 0 serves on CPU, for trials."""
    replicas: int = Field(default=1, ge=0, le=1000)
    """Replicas asked for (the scale subresource's spec.replicas); kept within min/max and the budget."""
    min_replicas: int = Field(default=0, ge=0, le=1000)
    """Fewest replicas the pool asks for (the budget may still give fewer; never counted when
    deciding whether queued work could ever run)."""
    max_replicas: int = Field(default=8, ge=1, le=1000)
    """Most replicas the pool may have."""
    max_batch: int = Field(default=8, ge=1, le=64)
    """Largest dynamic batch per forward pass (SPATIALFORGE_SERVE_MAX_BATCH)."""
    max_wait_ms: float = Field(default=10.0, ge=0, le=10_000)
    """How long a request waits for others to join its batch (SPATIALFORGE_SERVE_MAX_WAIT_MS)."""
    max_queue: int = Field(default=64, ge=1, le=100_000)
    """Requests one replica holds before answering 503 with Retry-After."""
    max_in_flight_per_tenant: int = Field(default=4, ge=1, le=10_000)
    """Requests one tenant may have in flight in the whole pool (enforced by the front end, across its
    replicas, in Redis)."""
    placement: PoolPlacement = Field(default_factory=lambda: PoolPlacement())
    """Where the replicas run."""

    @model_validator(mode="after")
    def _bounds(self) -> DepthPoolSpec:
        if self.min_replicas > self.max_replicas:
            raise ValueError(f"minReplicas ({self.min_replicas}) must not exceed maxReplicas ({self.max_replicas})")
        return self

    @property
    def wanted_replicas(self) -> int:
        """spec.replicas within [minReplicas, maxReplicas]."""
        return max(self.min_replicas, min(self.replicas, self.max_replicas))


class DepthPoolStatus(CRDModel):
    """Observed state, written by the operator."""

    replicas: int = 0
    """Replicas the operator runs (granted by the budget): the scale subresource's status.replicas."""
    ready_replicas: int = 0
    """Replicas whose server passes /readyz."""
    wanted_replicas: int | None = None
    """spec.replicas within [minReplicas, maxReplicas], before the budget."""
    selector: str = ""
    """Label selector of the pool's pods (for the scale subresource and autoscalers)."""
    gpus: int = 0
    """GPUs the pool holds: replicas x gpusPerReplica."""
    endpoints: int = 0
    """Ready addresses in the Service's EndpointSlices (what the front end balances over)."""
    service: str = ""
    """The Service (and Deployment) name: spatialforge-pool-<name>."""
    conditions: list[Condition] = Field(
        default_factory=list,
        json_schema_extra={"x-kubernetes-list-type": "map", "x-kubernetes-list-map-keys": ["type"]},
    )
    observed_generation: int | None = None
    failed_hand_offs: int = 0
    """Hand-offs that failed in a row (reset by one that succeeds)."""
    back_off_until: str | None = None
    """While set and in the future, the operator hands no batch to this pool (RFC 3339)."""
    reason: str | None = None
    """Reason of the most telling condition (BudgetLimited's when limited, else Ready's)."""
    message: str | None = None


class DepthPool(KubeResource):
    """A pool of warm depth servers: synchronous depth for the front end, GPUs from the budget."""

    kind: Literal["DepthPool"] = "DepthPool"
    spec: DepthPoolSpec
    status: DepthPoolStatus | None = None  # type: ignore[assignment]
