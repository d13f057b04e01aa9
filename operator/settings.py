"""Operator configuration, from SPATIALFORGE_* environment variables."""

from __future__ import annotations

from typing import Any

from pydantic import Field, field_validator
from pydantic_settings import BaseSettings, SettingsConfigDict


class OperatorSettings(BaseSettings):
    """Everything the operator can be told; see docs/architecture.md."""

    model_config = SettingsConfigDict(env_prefix="SPATIALFORGE_", extra="ignore")

    namespace: str = "spatialforge-system"
    """Where the operator runs: its leader Lease and the quota ConfigMap live here."""
    quota_configmap: str = "spatialforge-quotas"
    """ConfigMap with the global GPU budget (`gpuBudget`, absent: unlimited) and the queueing
    strategy (`queueingStrategy`: StrictFIFO, the default, or BestEffortFIFO)."""
    runner_image: str = "spatialforge/runner:0.1.0"
    runner_image_pull_policy: str = "IfNotPresent"
    runner_service_account: str = "spatialforge-runner"
    runner_command: list[str] = Field(default_factory=lambda: ["python", "-m", "spatialforge.runner"])
    runner_env_from_secret: str | None = None
    """Secret whose keys become runner env (object-store endpoint and credentials)."""
    research_mode: bool = False
    """SPATIALFORGE_RESEARCH_MODE: passed on to every runner pod (the CC-BY-NC model sizes)."""
    runner_runtime_class: str | None = None
    runner_node_selector: dict[str, str] = Field(default_factory=dict)
    """Node labels every runner pod requires (JSON in env), e.g. the GPU node pool's; a
    resource's own `placement.nodeSelector` adds to and overrides these."""
    runner_tolerations: list[dict[str, Any]] = Field(default_factory=list)
    """Tolerations every runner pod gets (JSON in env), e.g. for tainted GPU nodes."""
    runner_resources: dict[str, dict[str, str]] = Field(
        default_factory=lambda: {"requests": {"cpu": "1", "memory": "4Gi"}})
    """CPU and memory requests and limits of every runner container (JSON in env); the GPUs a
    resource asks for are added to its limits. A memory limit makes an over-use an OOMKilled
    pod, which the Job retries (backoffLimit) instead of the node's OOM killer choosing."""
    gpu_resource: str = "nvidia.com/gpu"

    @field_validator("runner_resources", mode="before")
    @classmethod
    def _quantities_as_strings(cls, value: Any) -> Any:
        """`cpu: 1` in values.yaml arrives as a JSON number; Kubernetes takes either."""
        if isinstance(value, dict):
            return {k: {r: str(q) for r, q in v.items()} if isinstance(v, dict) else v for k, v in value.items()}
        return value
    unschedulable_timeout_seconds: float = 300.0
    """A runner pod unschedulable this long fails its resource (fail fast); so does work that
    no node fits, this long after its creation (when nodes autoscale)."""
    nodes_autoscale: bool = True
    """Whether the GPU node pools scale (e.g. from zero). False: work that no current node fits
    (GPUs per pod, node selector, taints) fails at once instead of waiting for a node."""
    image_pull_grace_seconds: float = 60.0
    """A runner pod stuck in image pull / config errors this long fails its resource."""
    avg_run_seconds: float = 300.0
    """Prior for the queue ETA until runs have been observed."""
    pool_handoff_max_images: int = Field(default=0, ge=0, le=10_000)
    """DepthBatches of at most this many images (listed one by one, one shard) are run by a
    ready DepthPool of the same model instead of a Job (operator/handoff.py); 0: never."""
    pool_handoff_timeout_seconds: float = Field(default=300.0, gt=0, le=86_400)
    """How long a hand-off waits for the pool's answer before the batch runs as a Job."""
    pool_handoff_failures_before_backoff: int = Field(default=3, ge=1, le=1000)
    """Hand-offs a pool may fail in a row before it is skipped for `poolHandoffBackoffSeconds`."""
    pool_handoff_backoff_seconds: float = Field(default=120.0, ge=0, le=86_400)
    """How long a pool that keeps failing hand-offs is skipped (shown in its status)."""
    workers: int = 8
    """Concurrent reconciles."""
    admission_interval_seconds: float = 2.0
    leader_election: bool = True
    lease_name: str = "spatialforge-operator"
    lease_duration_seconds: float = 15.0
    identity: str | None = None
    """Leader-election identity; defaults to the pod (host) name."""
    health_port: int = 8080
    metrics_port: int = 9090
    kubeconfig: str | None = Field(default=None, validation_alias="KUBECONFIG")
    log_level: str = "INFO"
    """SPATIALFORGE_LOG_LEVEL: the level of the operator's own log (DEBUG, INFO, WARNING, ERROR or
    CRITICAL); Kopf's per-object log stays at WARNING."""

    @field_validator("log_level")
    @classmethod
    def _known_level(cls, value: str) -> str:
        level = value.strip().upper()
        if level not in ("DEBUG", "INFO", "WARNING", "ERROR", "CRITICAL"):
            raise ValueError(f"log_level must be DEBUG, INFO, WARNING, ERROR or CRITICAL, got {value!r}")
        return level
