"""Signed upload forms into the tenant's own input prefix, and the tenant's uploads."""

from __future__ import annotations

from fastapi import APIRouter, Body

from spatialforge.apiserver.api.deps import ApiKeyDep, UploadsDep
from spatialforge.apiserver.schemas import UploadCreate, UploadPublic, UploadsPublic

router = APIRouter(tags=["uploads"])


@router.post("/v1/uploads", status_code=201, response_model=UploadPublic)
async def create_upload(principal: ApiKeyDep, uploads: UploadsDep,
                        body: UploadCreate = Body(openapi_examples={"two": {"value": {"files": [
                            {"name": "a.jpg", "content_type": "image/jpeg"}, {"name": "b.jpg"}]}}})) -> dict:
    """A signed POST form for each file under s3://<bucket>/tenants/<tenant>/inputs/<upload id>/:
    send `fields`, then the file as `file` (multipart/form-data). The store refuses a file over
    `max_bytes`; uploads expire after the uploads retention (see GET /v1/uploads)."""
    return await uploads.create(principal.tenant, [(f.name, f.content_type) for f in body.files])


@router.get("/v1/uploads", response_model=UploadsPublic)
async def list_uploads(principal: ApiKeyDep, uploads: UploadsDep) -> dict:
    """Your uploads, newest first, with size and `expires_at`; their bytes count in /v1/usage."""
    data = await uploads.list(principal.tenant)
    return {"data": data, "count": len(data)}
