"""Types shared by both kinds: object-store URIs, model choice, placement, status."""

from __future__ import annotations

import datetime as dt
import enum
import re
from typing import Annotated, Any, Literal

from pydantic import AfterValidator, BaseModel, ConfigDict, Field, ValidationInfo
from pydantic.alias_generators import to_camel

# Control characters (C0, DEL, C1) are never part of a URI we accept.
_CTL = r"\x00-\x1f\x7f-\x9f"
# One key segment between slashes that is neither "." nor "..". Each branch is decided by the
# first one or two characters, so both RE2 (the API server) and Python's re match in linear time.
_SEGMENT = rf"[^/.{_CTL}][^/{_CTL}]*|\.[^/.{_CTL}][^/{_CTL}]*|\.\.[^/{_CTL}]+"
# s3://bucket/key: bucket names as S3 defines them, then a key of such segments (empty segments,
# and so a trailing "/" for a prefix, are allowed).
S3_URI_PATTERN = rf"^s3://[a-z0-9][a-z0-9.-]{{1,61}}[a-z0-9](/({_SEGMENT})?)*$"
MAX_URI_LENGTH = 1024
# Validation context key: `spatialforge run` allows file:// inputs and outputs on a laptop.
ALLOW_LOCAL_FILES = "allow_local_files"


class CRDModel(BaseModel):
    """Base of every CR model: camelCase on the wire, docstrings become CRD descriptions."""

    model_config = ConfigDict(
        alias_generator=to_camel,
        populate_by_name=True,
        use_attribute_docstrings=True,
        extra="forbid",
    )


def _check_uri(value: str, info: ValidationInfo) -> str:
    """The same rules as the CRD's pattern, with a message that says which one failed."""
    bad = next((ch for ch in value if ord(ch) < 0x20 or 0x7F <= ord(ch) <= 0x9F), None)
    if bad is not None:
        raise ValueError(f"must not contain control characters (found {bad!r})")
    if value.startswith("file://") and (info.context or {}).get(ALLOW_LOCAL_FILES):
        path = value[len("file://"):]
    elif value.startswith("s3://"):
        path = value[len("s3://"):].partition("/")[2]
    else:
        raise ValueError(f"must be an s3://bucket/key URI (got {value[:80]!r})")
    if any(segment in (".", "..") for segment in path.split("/")):
        raise ValueError(f"must not contain '.' or '..' path segments (got {value[:80]!r})")
    if value.startswith("s3://") and not re.fullmatch(S3_URI_PATTERN, value):
        raise ValueError(f"must be an s3://bucket/key URI with a valid bucket name (got {value[:80]!r})")
    return value


ObjectURI = Annotated[
    str,
    AfterValidator(_check_uri),
    Field(max_length=MAX_URI_LENGTH, json_schema_extra={"pattern": S3_URI_PATTERN}),
]


def immutable(field: str) -> dict[str, Any]:
    """CEL rule that refuses any change to a field after creation."""
    return {"x-kubernetes-validations": [{"rule": "self == oldSelf", "message": f"{field} is immutable"}]}


class ModelSize(str, enum.Enum):
    small = "small"  # Depth Anything V2 Small, Apache-2.0.
    base = "base"  # CC-BY-NC-4.0: research mode only.
    large = "large"  # CC-BY-NC-4.0: research mode only.


class ModelVariant(str, enum.Enum):
    relative = "relative"  # Relative (affine-invariant) depth.
    metric_indoor = "metric-indoor"  # Metric depth in metres, trained on Hypersim.
    metric_outdoor = "metric-outdoor"  # Metric depth in metres, trained on Virtual KITTI.


class DepthModel(CRDModel):
    """Which Depth Anything V2 checkpoint to run."""

    size: ModelSize = ModelSize.small
    """Model size. Base and large weights are CC-BY-NC and need the deployment's research mode."""
    variant: ModelVariant = ModelVariant.relative
    """Relative depth, or metric depth (metres) for indoor or outdoor scenes."""


class Intrinsics(CRDModel):
    """Pinhole camera intrinsics in pixels; when absent: EXIF, then 0.9 x max(width, height)."""

    fx: float = Field(gt=0, le=1e6)
    fy: float = Field(gt=0, le=1e6)
    cx: float | None = Field(default=None, ge=0, le=1e6)
    """Principal point x; defaults to the image centre."""
    cy: float | None = Field(default=None, ge=0, le=1e6)
    """Principal point y; defaults to the image centre."""


class Toleration(CRDModel):
    """A pod toleration, as in core/v1."""

    key: str | None = None
    operator: Literal["Exists", "Equal"] | None = None
    value: str | None = None
    effect: Literal["NoSchedule", "PreferNoSchedule", "NoExecute"] | None = None
    toleration_seconds: int | None = None


class Placement(CRDModel):
    """Where and with how much the runner pods run."""

    gpus: int = Field(default=1, ge=0, le=8)
    """GPUs per runner pod (nvidia.com/gpu). 0 runs on CPU, for trials."""
    node_selector: dict[str, str] = Field(default_factory=dict)
    """Node labels the runner pods require."""
    tolerations: list[Toleration] = Field(default_factory=list, max_length=16)
    """Taints the runner pods tolerate."""
    priority_class_name: str | None = Field(default=None, max_length=253)
    """Kubernetes PriorityClass of the runner pods."""


class Lifecycle(CRDModel):
    """Kubernetes Job lifecycle fields, passed to the child Job with the same meaning."""

    suspend: bool = False
    """Hold the work back (a running Job is suspended and its pods stopped)."""
    active_deadline_seconds: int | None = Field(default=None, ge=60, le=7 * 24 * 3600)
    """Fail the resource when it has run longer than this."""
    backoff_limit: int = Field(default=2, ge=0, le=10)
    """Retries of retryable failures (invalid input is never retried)."""
    ttl_seconds_after_finished: int | None = Field(default=None, ge=0, le=30 * 24 * 3600)
    """Delete the resource this long after it finished; absent keeps it."""
    priority: int = Field(default=0, ge=-1000, le=1000)
    """Admission order within SpatialForge's own queue: higher first, then oldest first."""
    queue_name: str | None = Field(default=None, max_length=63, pattern=r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$")
    """Kueue LocalQueue; when set, Kueue (not SpatialForge) admits the work."""


class Phase(str, enum.Enum):
    pending = "Pending"
    queued = "Queued"
    running = "Running"
    succeeded = "Succeeded"
    failed = "Failed"
    cancelled = "Cancelled"

    @property
    def terminal(self) -> bool:
        return self in (Phase.succeeded, Phase.failed, Phase.cancelled)


class Condition(CRDModel):
    """A standard Kubernetes condition (metav1.Condition)."""

    type: str = Field(max_length=316)
    status: Literal["True", "False", "Unknown"]
    reason: str = Field(max_length=1024)
    message: str = Field(default="", max_length=32768)
    last_transition_time: dt.datetime
    observed_generation: int | None = Field(default=None, ge=0)


class ShardProgress(CRDModel):
    """Progress of one shard (one pod of an Indexed Job)."""

    done: int = Field(default=0, ge=0)
    total: int = Field(default=0, ge=0)
    stage: str = Field(default="", max_length=64)
    """Current stage, e.g. depth, poses, fusion."""
    skipped: int = Field(default=0, ge=0)
    """Invalid images this shard skipped (spec.onInvalidImage: Skip)."""
    floor_area_m2: float | None = Field(default=None, ge=0)
    """Floor area in m² of the floor plan this shard produced (ReconstructionJob), when one was produced."""
    room_count: int | None = Field(default=None, ge=0)
    """Rooms in the floor plan this shard produced, when one was produced."""
    updated_at: dt.datetime | None = None


class Progress(CRDModel):
    """Work done so far. Each runner shard merge-patches only its own key of `shards`;
    the operator sums them into done/total."""

    done: int = Field(default=0, ge=0)
    total: int = Field(default=0, ge=0)
    stage: str = Field(default="", max_length=64)
    shards: dict[str, ShardProgress] = Field(default_factory=dict, max_length=64)
    """Shard index -> that shard's progress (at most spec.parallelism's maximum)."""


class ResourceStatus(CRDModel):
    """Observed state, written by the operator (and progress by the runner)."""

    phase: Phase | None = None
    conditions: list[Condition] = Field(
        default_factory=list,
        json_schema_extra={"x-kubernetes-list-type": "map", "x-kubernetes-list-map-keys": ["type"]},
    )
    observed_generation: int | None = None
    progress: Progress | None = None
    progress_summary: str | None = None
    """done/total as text, for the printer column."""
    start_time: dt.datetime | None = None
    completion_time: dt.datetime | None = None
    attempts: int | None = None
    """Runner pods started so far (1 + retries)."""
    gpu_seconds: float | None = None
    """GPU time used: GPUs per pod x seconds each pod ran."""
    skipped_images: int | None = None
    """Invalid images skipped over all shards (spec.onInvalidImage: Skip); listed in the manifest."""
    floor_area_m2: float | None = Field(default=None, ge=0)
    """Floor area in m² from the floor plan, when one was produced (the manifest has the plan)."""
    room_count: int | None = Field(default=None, ge=0)
    """Rooms in the floor plan, when one was produced."""
    queue_position: int | None = None
    """1-based place in the admission queue while Queued."""
    estimated_start_time: dt.datetime | None = None
    """Rough ETA of admission while Queued."""
    job_name: str | None = None
    """The child batch/v1 Job."""
    manifest_uri: str | None = None
    """Where the output manifest is, once Succeeded."""
    reason: str | None = None
    """Machine-readable reason of the current phase (a condition reason)."""
    message: str | None = None
    """Human summary of the latest state."""


class KubeResource(CRDModel):
    """apiVersion / kind / metadata envelope of a custom resource."""

    model_config = ConfigDict(extra="ignore")

    api_version: str
    kind: str
    metadata: dict[str, Any] = Field(default_factory=dict)
    status: ResourceStatus | None = None
