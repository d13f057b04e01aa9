"""Object store: tenant prefixes, signed upload forms and GET URLs (boto3), result listing,
and retention: every object the system writes carries a retention tag, and the bucket's
lifecycle rules (installed at start-up) expire each tag value after its own number of days.

Uploads land under `tenants/<tenant>/inputs/<upload id>/`, results under tenant-chosen
output prefixes, so the rules filter by tag, not by prefix. The runner tags its outputs
(`SPATIALFORGE_S3_OBJECT_TAGGING`, default `spatialforge-retention=result`; the tag names
live in `spatialforge.crds.constants`).
"""

from __future__ import annotations

import datetime as dt
import re
from typing import Any
from xml.sax.saxutils import escape

import boto3
from botocore.config import Config as BotoConfig
from starlette.concurrency import run_in_threadpool

from spatialforge.apiserver.core.config import Settings
from spatialforge.crds.constants import RETENTION_RESULT, RETENTION_TAG, RETENTION_UPLOAD

SAFE_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,199}$")
UPLOAD_ID = re.compile(r"^[0-9a-f]{16}$")
UPLOAD_TAG_VALUE = RETENTION_UPLOAD
RESULT_TAG_VALUE = RETENTION_RESULT
RULE_UPLOADS = "spatialforge-uploads"
RULE_RESULTS = "spatialforge-results"


def split_uri(uri: str) -> tuple[str, str]:
    rest = uri.removeprefix("s3://")
    bucket, _, key = rest.partition("/")
    return bucket, key


def tagging_xml(key: str, value: str) -> str:
    """The `tagging` form field of a POST upload (S3's Tagging document)."""
    return (f"<Tagging><TagSet><Tag><Key>{escape(key)}</Key><Value>{escape(value)}</Value></Tag>"
            "</TagSet></Tagging>")


def expiry(written: dt.datetime, days: int) -> dt.datetime:
    """When a lifecycle rule of `days` removes an object written at `written`: S3 (and MinIO)
    add the days and round up to the next midnight UTC."""
    due = written.astimezone(dt.UTC) + dt.timedelta(days=days)
    midnight = due.replace(hour=0, minute=0, second=0, microsecond=0)
    return midnight if midnight == due else midnight + dt.timedelta(days=1)


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

    def uploads_prefix(self, tenant: str) -> str:
        return f"{self.tenant_prefix(tenant)}inputs/"

    def owns(self, tenant: str, uri: str) -> bool:
        prefix = self.tenant_prefix(tenant)
        rest = uri[len(prefix) - 1:]
        return uri.startswith(prefix) and "/../" not in rest and not rest.endswith("/..") and "/./" not in rest

    def upload_id(self, tenant: str, uri: str) -> str | None:
        """The upload an input URI points into (`.../inputs/<upload id>/...`), if any."""
        base = self.uploads_prefix(tenant)
        if not uri.startswith(base):
            return None
        candidate = uri[len(base):].split("/", 1)[0]
        return candidate if UPLOAD_ID.match(candidate) else None

    # --- start-up -------------------------------------------------------------------------
    async def ensure_bucket(self) -> None:
        """Create the bucket if needed and install the retention rules."""
        def _ensure() -> None:
            try:
                self.client.head_bucket(Bucket=self.bucket)
            except self.client.exceptions.ClientError:
                self.client.create_bucket(Bucket=self.bucket)
            self._install_lifecycle()
        await run_in_threadpool(_ensure)

    def lifecycle_rules(self) -> list[dict[str, Any]]:
        return [self._rule(RULE_UPLOADS, UPLOAD_TAG_VALUE, self.settings.uploads_retention_days),
                self._rule(RULE_RESULTS, RESULT_TAG_VALUE, self.settings.results_retention_days)]

    @staticmethod
    def _rule(rule_id: str, value: str, days: int) -> dict[str, Any]:
        return {"ID": rule_id, "Status": "Enabled", "Filter": {"Tag": {"Key": RETENTION_TAG, "Value": value}},
                "Expiration": {"Days": days}}

    def _install_lifecycle(self) -> None:
        """Put our two rules, keeping any rule of the bucket that is not ours."""
        try:
            current = self.client.get_bucket_lifecycle_configuration(Bucket=self.bucket).get("Rules", [])
        except self.client.exceptions.ClientError as exc:
            if exc.response.get("Error", {}).get("Code") not in ("NoSuchLifecycleConfiguration", "NoSuchBucket"):
                raise
            current = []
        ours = {RULE_UPLOADS, RULE_RESULTS}
        rules = [r for r in current if r.get("ID") not in ours] + self.lifecycle_rules()
        if [r for r in current if r.get("ID") in ours] == self.lifecycle_rules():
            return
        self.client.put_bucket_lifecycle_configuration(Bucket=self.bucket, LifecycleConfiguration={"Rules": rules})

    async def ping(self) -> None:
        await run_in_threadpool(self.client.head_bucket, Bucket=self.bucket)

    # --- signing --------------------------------------------------------------------------
    def sign_upload(self, key: str, content_type: str | None, ttl: int) -> dict[str, Any]:
        """A presigned POST form for one object: at most `upload_max_bytes`, tagged for the
        uploads' retention rule, the content type fixed if one was given."""
        tagging = tagging_xml(RETENTION_TAG, UPLOAD_TAG_VALUE)
        fields: dict[str, str] = {"tagging": tagging}
        conditions: list[Any] = [["content-length-range", 0, self.settings.upload_max_bytes], {"tagging": tagging}]
        if content_type:
            fields["Content-Type"] = content_type
            conditions.append({"Content-Type": content_type})
        return self.signer.generate_presigned_post(self.bucket, key, Fields=fields, Conditions=conditions,
                                                   ExpiresIn=ttl)

    def sign_get(self, bucket: str, key: str, ttl: int) -> str:
        return self.signer.generate_presigned_url("get_object", Params={"Bucket": bucket, "Key": key}, ExpiresIn=ttl)

    # --- reads and deletes ----------------------------------------------------------------
    async def list_under(self, uri: str) -> list[dict[str, Any]]:
        bucket, prefix = split_uri(uri.rstrip("/") + "/")

        def _list() -> list[dict[str, Any]]:
            out: list[dict[str, Any]] = []
            for page in self.client.get_paginator("list_objects_v2").paginate(Bucket=bucket, Prefix=prefix):
                out.extend(page.get("Contents", []))
            return out
        return await run_in_threadpool(_list)

    async def delete_under(self, uri: str) -> int:
        """Delete every object under a prefix (1,000 per request); returns how many."""
        bucket, _ = split_uri(uri)
        items = await self.list_under(uri)

        def _delete() -> int:
            for i in range(0, len(items), 1000):
                chunk = [{"Key": o["Key"]} for o in items[i:i + 1000]]
                self.client.delete_objects(Bucket=bucket, Delete={"Objects": chunk, "Quiet": True})
            return len(items)
        return await run_in_threadpool(_delete)
