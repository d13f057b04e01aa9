"""Signed PUT URLs into the tenant's own input prefix."""

from __future__ import annotations

import secrets

from fastapi import APIRouter, Body
from starlette.concurrency import run_in_threadpool

from spatialforge.apiserver.api.deps import ApiKeyDep, ServicesDep
from spatialforge.apiserver.schemas import UploadCreate, UploadPublic

router = APIRouter(tags=["uploads"])


@router.post("/v1/uploads", status_code=201, response_model=UploadPublic)
async def create_upload(principal: ApiKeyDep, services: ServicesDep,
                        body: UploadCreate = Body(openapi_examples={"two": {"value": {"files": [
                            {"name": "a.jpg", "content_type": "image/jpeg"}, {"name": "b.jpg"}]}}})) -> dict:
    """Signed PUT URLs for each file under s3://<bucket>/tenants/<tenant>/inputs/<upload id>/."""
    storage = services.storage
    ttl = services.settings.upload_url_ttl_seconds
    key_prefix = f"tenants/{principal.tenant}/inputs/{secrets.token_hex(8)}/"

    def sign() -> list[dict]:
        out = []
        for f in body.files:
            key = key_prefix + f.name
            out.append({"name": f.name, "uri": f"s3://{storage.bucket}/{key}", "url": storage.sign_put(key, f.content_type, ttl),
                        "headers": {"Content-Type": f.content_type} if f.content_type else {}})
        return out

    return {"prefix": f"s3://{storage.bucket}/{key_prefix}", "expires_in": ttl, "files": await run_in_threadpool(sign)}
