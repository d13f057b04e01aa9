"""Object store: tenant prefixes, signed PUT/GET URLs (boto3 presigned URLs), result listing."""

from __future__ import annotations

import re
from typing import Any

import boto3
from botocore.config import Config as BotoConfig
from starlette.concurrency import run_in_threadpool

from spatialforge.apiserver.core.config import Settings

SAFE_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,199}$")


def split_uri(uri: str) -> tuple[str, str]:
    rest = uri.removeprefix("s3://")
    bucket, _, key = rest.partition("/")
    return bucket, key


class Storage:
    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.bucket = settings.bucket
        secret = settings.s3_secret_access_key.get_secret_value() if settings.s3_secret_access_key else None
        common: dict[str, Any] = dict(region_name=settings.s3_region, aws_access_key_id=settings.s3_access_key_id,
                                      aws_secret_access_key=secret)
        cfg = BotoConfig(signature_version="s3v4", s3={"addressing_style": "path"},
                         connect_timeout=3, read_timeout=10, retries={"max_attempts": 2})
        self.client = boto3.client("s3", endpoint_url=settings.s3_endpoint, config=cfg, **common)
        self.signer = boto3.client("s3", endpoint_url=settings.s3_public_endpoint or settings.s3_endpoint,
                                   config=cfg, **common)

    def tenant_prefix(self, tenant: str) -> str:
        """Everything a tenant may read or write: s3://<bucket>/tenants/<tenant>/"""
        return f"s3://{self.bucket}/tenants/{tenant}/"

    def owns(self, tenant: str, uri: str) -> bool:
        prefix = self.tenant_prefix(tenant)
        return uri.startswith(prefix) and "/../" not in uri[len(prefix) - 1:] and not uri.endswith("/..")

    async def ensure_bucket(self) -> None:
        def _ensure() -> None:
            try:
                self.client.head_bucket(Bucket=self.bucket)
            except self.client.exceptions.ClientError:
                self.client.create_bucket(Bucket=self.bucket)
        await run_in_threadpool(_ensure)

    async def ping(self) -> None:
        await run_in_threadpool(self.client.head_bucket, Bucket=self.bucket)

    def sign_put(self, key: str, content_type: str | None, ttl: int) -> str:
        params: dict[str, Any] = {"Bucket": self.bucket, "Key": key}
        if content_type:
            params["ContentType"] = content_type
        return self.signer.generate_presigned_url("put_object", Params=params, ExpiresIn=ttl)

    def sign_get(self, bucket: str, key: str, ttl: int) -> str:
        return self.signer.generate_presigned_url("get_object", Params={"Bucket": bucket, "Key": key}, ExpiresIn=ttl)

    async def list_under(self, uri: str) -> list[dict[str, Any]]:
        bucket, prefix = split_uri(uri.rstrip("/") + "/")

        def _list() -> list[dict[str, Any]]:
            out: list[dict[str, Any]] = []
            for page in self.client.get_paginator("list_objects_v2").paginate(Bucket=bucket, Prefix=prefix):
                out.extend(page.get("Contents", []))
            return out
        return await run_in_threadpool(_list)
