"""Jobs: submit a DepthBatch or ReconstructionJob, list, read, cancel, sign result URLs,
delete results."""

from __future__ import annotations

from typing import Annotated, Literal

from fastapi import APIRouter, Body, Header, Query, Response

from spatialforge.apiserver.api.deps import ApiKeyDep, JobReadsDep, JobSubmissionDep, JobTerminalDep, SettingsDep
from spatialforge.apiserver import errors
from spatialforge.apiserver.schemas import (
    ErrorPublic,
    JobPublic,
    JobsPublic,
    ReconstructionCreate,
    ResultsDeleted,
    ResultsPublic,
)
from spatialforge.crds import DepthBatchSpec

router = APIRouter(tags=["jobs"])

ERRORS = {401: {"model": ErrorPublic}, 403: {"model": ErrorPublic}, 422: {"model": ErrorPublic},
          429: {"model": ErrorPublic, "description": "per-minute rate (`rate_limited`, X-RateLimit-*), month's units "
                "(`quota_exceeded`, X-Quota-*) or concurrent jobs (`concurrent_jobs_limit`); see Retry-After"},
          503: {"model": ErrorPublic}}
DEPTH_EXAMPLE = {"inputs": ["s3://spatialforge/tenants/acme/inputs/u1/"],
                 "output": {"uri": "s3://spatialforge/tenants/acme/results"},
                 "model": {"size": "small", "variant": "relative"}, "placement": {"gpus": 1}}
RECON_EXAMPLE = {"input": "s3://spatialforge/tenants/acme/inputs/u2/walk.mp4",
                 "output": {"uri": "s3://spatialforge/tenants/acme/results"}, "quality": "draft",
                 "outputs": ["trajectory", "mesh", "floorplan"]}
IdempotencyKey = Annotated[str | None, Header(alias="Idempotency-Key", max_length=200,
                                                description="Retrying a POST with the same key returns the first job")]
WebhookUrl = Annotated[str | None, Query(max_length=2048, description="POSTed a signed event on a terminal phase")]


@router.post("/v1/depth-batches", status_code=202, response_model=JobPublic, responses=ERRORS)
async def create_depth_batch(principal: ApiKeyDep, jobs: JobSubmissionDep, response: Response,
                             spec: Annotated[DepthBatchSpec, Body(openapi_examples={"depth": {"value": DEPTH_EXAMPLE}})],
                             idempotency_key: IdempotencyKey = None, webhook_url: WebhookUrl = None) -> dict:
    """Submit a DepthBatch; the body is its spec."""
    done = await jobs.submit(principal.tenant, "DepthBatch", spec,
                              idempotency_key=idempotency_key, webhook_url=webhook_url)
    response.headers.update({**done.headers, "Location": done.job["status_url"]})
    return done.job


@router.post("/v1/reconstructions", status_code=202, response_model=JobPublic, responses=ERRORS)
async def create_reconstruction(principal: ApiKeyDep, jobs: JobSubmissionDep, response: Response,
                                body: Annotated[ReconstructionCreate, Body(openapi_examples={"recon": {"value": RECON_EXAMPLE}})],
                                idempotency_key: IdempotencyKey = None, webhook_url: WebhookUrl = None) -> dict:
    """Submit a ReconstructionJob; the body is its spec, with `outputs` (any of trajectory,
    pointcloud, mesh, floorplan) as shorthand for `output.formats`."""
    try:
        spec = body.to_spec()
    except ValueError as exc:
        raise errors.InvalidRequest(str(exc).splitlines()[0], code="invalid_outputs") from exc
    done = await jobs.submit(principal.tenant, "ReconstructionJob", spec,
                              idempotency_key=idempotency_key, webhook_url=webhook_url)
    response.headers.update({**done.headers, "Location": done.job["status_url"]})
    return done.job


@router.get("/v1/jobs", response_model=JobsPublic, responses=ERRORS)
async def list_jobs(principal: ApiKeyDep, jobs: JobReadsDep,
                    kind: Literal["DepthBatch", "ReconstructionJob"] | None = None,
                    phase: Literal["Pending", "Queued", "Running", "Succeeded", "Failed", "Cancelled"] | None = None,
                    limit: Annotated[int, Query(ge=1, le=500)] = 50,
                    offset: Annotated[int, Query(ge=0)] = 0) -> dict:
    """The tenant's jobs, newest first (from the watch-backed cache)."""
    return jobs.list(principal.tenant, kind=kind, phase=phase, limit=limit, offset=offset)



@router.get("/v1/jobs/{job_id}", response_model=JobPublic, responses={**ERRORS, 404: {"model": ErrorPublic}})
async def read_job(principal: ApiKeyDep, jobs: JobReadsDep, job_id: str) -> dict:
    """Phase, progress, queue position and ETA, conditions, timings, GPU-seconds."""
    return await jobs.get(principal.tenant, job_id)


@router.delete("/v1/jobs/{job_id}", status_code=202, response_model=JobPublic,
               responses={**ERRORS, 404: {"model": ErrorPublic}, 409: {"model": ErrorPublic}})
async def cancel_job(principal: ApiKeyDep, jobs: JobTerminalDep, job_id: str) -> dict:
    """Cancel a job (its resource is deleted; the operator stops its pods)."""
    return await jobs.cancel(principal.tenant, job_id)


@router.get("/v1/jobs/{job_id}/results", response_model=ResultsPublic,
            responses={**ERRORS, 404: {"model": ErrorPublic}, 409: {"model": ErrorPublic}, 410: {"model": ErrorPublic}})
async def job_results(principal: ApiKeyDep, jobs: JobReadsDep, settings: SettingsDep, job_id: str,
                      expires_in: Annotated[int | None, Query(ge=1, le=7 * 24 * 3600)] = None) -> dict:
    """Signed GET URLs for every output file (24 h by default); 409 `not_ready` before the job
    Succeeded, 410 once its results expired (`expires_at`) or were deleted."""
    ttl = expires_in or settings.results_url_ttl_seconds
    return await jobs.results(principal.tenant, job_id, ttl)


@router.delete("/v1/jobs/{job_id}/results", response_model=ResultsDeleted,
               responses={**ERRORS, 404: {"model": ErrorPublic}, 409: {"model": ErrorPublic}})
async def delete_job_results(principal: ApiKeyDep, jobs: JobReadsDep, job_id: str) -> dict:
    """Delete a finished job's outputs now (before retention would); its results then answer 410."""
    return await jobs.delete_results(principal.tenant, job_id)
