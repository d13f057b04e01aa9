"""Request and response bodies. Job request bodies are the CR spec models themselves
(`spatialforge.crds.DepthBatchSpec`, `ReconstructionJobSpec`); these are the rest."""

from __future__ import annotations

import datetime as dt
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field

from spatialforge.crds import ReconstructionJobSpec
from spatialforge.crds.v1alpha1.reconstructionjob import ReconstructionFormat

# --- errors -------------------------------------------------------------------------------


class ErrorBody(BaseModel):
    code: str
    message: str


class ErrorPublic(BaseModel):
    error: ErrorBody
    request_id: str


# --- jobs ---------------------------------------------------------------------------------


class ConditionPublic(BaseModel):
    type: str
    status: str
    reason: str = ""
    message: str = ""


class ProgressPublic(BaseModel):
    done: int = 0
    total: int = 0
    stage: str = ""


class ReconstructionCreate(ReconstructionJobSpec):
    """A ReconstructionJob's spec, plus `outputs`: what to produce, any of trajectory,
    pointcloud, mesh and floorplan (shorthand for `output.formats`; a trajectory-only job runs
    only the pose stage)."""

    outputs: list[ReconstructionFormat] | None = Field(default=None, min_length=1,
                                                       max_length=len(ReconstructionFormat))

    def to_spec(self) -> ReconstructionJobSpec:
        """The resource's spec: `outputs` folded into `output.formats`."""
        data = self.model_dump(by_alias=True, exclude={"outputs"}, exclude_unset=True, mode="json")
        if self.outputs is not None:
            given = (data.get("output") or {}).get("formats")
            wanted = [f.value for f in dict.fromkeys(self.outputs)]
            if given is not None and sorted(given) != sorted(wanted):
                raise ValueError("outputs and output.formats disagree; give one of them")
            data["output"]["formats"] = wanted
        return ReconstructionJobSpec.model_validate(data)


class JobPublic(BaseModel):
    id: str
    kind: Literal["DepthBatch", "ReconstructionJob"]
    phase: str
    reason: str | None = None
    message: str | None = None
    progress: ProgressPublic = Field(default_factory=ProgressPublic)
    queue_position: int | None = None
    estimated_start_time: str | None = None
    conditions: list[ConditionPublic] = Field(default_factory=list)
    created_at: str | None = None
    started_at: str | None = None
    completed_at: str | None = None
    duration_seconds: float | None = None
    gpu_seconds: float | None = None
    attempts: int | None = None
    skipped_images: int | None = None
    """Images a DepthBatch with `onInvalidImage: Skip` left out (listed with reasons in its
    manifest); their units are refunded when it succeeds."""
    units: int = 0
    """Units charged for this job at submission (before any refund)."""
    status_url: str
    results_url: str
    expires_at: str | None = None
    """When a Succeeded job's results expire (the bucket's retention rule); then its results are 410."""

    model_config = ConfigDict(json_schema_extra={"examples": [{
        "id": "db-3f2a9c1b7d4e", "kind": "DepthBatch", "phase": "Running", "reason": "Running",
        "progress": {"done": 12, "total": 40, "stage": "depth"}, "conditions": [],
        "created_at": "2026-01-01T10:00:00Z", "started_at": "2026-01-01T10:00:03Z", "gpu_seconds": None,
        "status_url": "/v1/jobs/db-3f2a9c1b7d4e", "results_url": "/v1/jobs/db-3f2a9c1b7d4e/results"}]})


class JobsPublic(BaseModel):
    data: list[JobPublic]
    count: int
    next_offset: int | None = None


class ResultFile(BaseModel):
    key: str
    """Path relative to the job's result prefix, e.g. shard-00000/manifest.json."""
    size: int
    url: str


class ResultsPublic(BaseModel):
    id: str
    expires_in: int
    """Seconds the signed URLs stay valid."""
    expires_at: str | None = None
    """When the results themselves expire (retention); afterwards this endpoint answers 410."""
    files: list[ResultFile]


class ResultsDeleted(BaseModel):
    id: str
    deleted_files: int
    deleted_at: str


# --- uploads ------------------------------------------------------------------------------


class UploadFile(BaseModel):
    name: str = Field(pattern=r"^[A-Za-z0-9][A-Za-z0-9._-]{0,199}$", examples=["frame-0001.jpg"])
    content_type: str | None = Field(default=None, max_length=100, examples=["image/jpeg"])


class UploadCreate(BaseModel):
    files: list[UploadFile] = Field(min_length=1, max_length=1000)


class UploadTarget(BaseModel):
    name: str
    uri: str
    url: str
    method: Literal["POST"] = "POST"
    """A multipart/form-data POST to `url`: every `fields` entry, then the file as field `file`."""
    fields: dict[str, str] = Field(default_factory=dict)
    headers: dict[str, str] = Field(default_factory=dict)


class UploadPublic(BaseModel):
    id: str
    prefix: str
    """Use this as a DepthBatch input (a prefix) once every file is uploaded."""
    expires_in: int
    """Seconds the upload forms stay valid."""
    max_bytes: int
    """The largest file each form accepts (the store refuses a larger one)."""
    files: list[UploadTarget]


class UploadSummary(BaseModel):
    id: str
    prefix: str
    files: int
    bytes: int
    uploaded_at: str
    expires_at: str
    """When the uploads' retention rule removes it (days after upload, rounded to midnight UTC)."""


class UploadsPublic(BaseModel):
    data: list[UploadSummary]
    count: int


# --- keys, plans, usage -------------------------------------------------------------------


class KeyCreate(BaseModel):
    tenant: str = Field(pattern=r"^[a-z0-9]([a-z0-9-]{0,38}[a-z0-9])?$", examples=["acme"])
    role: Literal["user", "admin"] = "user"
    live: bool = True
    name: str = Field(default="", max_length=100)


class KeyPublic(BaseModel):
    key_id: str
    tenant: str
    role: str
    name: str = ""
    created: str = ""
    revoked: str = ""


class KeyCreated(KeyPublic):
    key: str
    """The key itself: shown this once, never again."""


class KeysPublic(BaseModel):
    data: list[KeyPublic]
    count: int


class PlanUpdate(BaseModel):
    plan: Literal["free", "builder", "pro", "enterprise"]
    monthly_units: int | None = Field(default=None, ge=0)
    rate_per_minute: int | None = Field(default=None, ge=1)
    gpu_limit: int | None = Field(default=None, ge=0)
    concurrent_jobs: int | None = Field(default=None, ge=1)


class PlanPublic(BaseModel):
    tenant: str
    plan: str
    monthly_units: int
    rate_per_minute: int
    gpu_limit: int
    concurrent_jobs: int
    model_sizes: list[str]
    presets: list[str]
    grace_until: float | None = None


class UsagePublic(BaseModel):
    tenant: str
    month: str
    plan: str
    units_used: int
    units_limit: int
    units_refunded: int = 0
    """Units given back this month for jobs that never ran a runner (included in units_used's net)."""
    gpu_seconds: float
    upload_bytes: int = 0
    """Bytes of uploads counted this month (when a job used them or the uploads were listed)."""
    jobs: dict[str, int]


class WebhookFailurePublic(BaseModel):
    event_id: str = Field(examples=["evt_5b1d7c52-3f0e-4a8e-9a43-0c1f6f3b2a10"])
    url: str = Field(examples=["https://hooks.example.com/spatialforge"])
    attempts: int = Field(examples=[6])
    last_error: str = Field(examples=["HTTP 500"])
    at: int = Field(description="When the delivery was given up (unix seconds)", examples=[1795430400])


class WebhookFailuresPublic(BaseModel):
    data: list[WebhookFailurePublic]
    count: int


# --- billing ------------------------------------------------------------------------------


class CheckoutCreate(BaseModel):
    plan: Literal["builder", "pro"] = Field(examples=["pro"])


class SessionPublic(BaseModel):
    id: str
    url: str


def example(value: Any) -> dict[str, Any]:
    return {"default": {"summary": "example", "value": value}}
