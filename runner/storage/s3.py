"""S3 (and MinIO) store through boto3: retries, multipart transfers, checksums.

Configuration, first match wins:
- endpoint: `SPATIALFORGE_S3_ENDPOINT`, else boto3's own `AWS_ENDPOINT_URL_S3` / `AWS_ENDPOINT_URL`;
- region: `AWS_REGION`, `AWS_DEFAULT_REGION`, else us-east-1;
- credentials: a mounted secret folder `SPATIALFORGE_S3_SECRET_DIR` holding files
  `AWS_ACCESS_KEY_ID` and `AWS_SECRET_ACCESS_KEY` (or `accesskey`/`secretkey`), else boto3's
  chain (`AWS_ACCESS_KEY_ID`/`AWS_SECRET_ACCESS_KEY`, IRSA, instance profile).
"""

from __future__ import annotations

import io
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, BinaryIO
from urllib.parse import urlparse

from spatialforge.runner.errors import InputNotFoundError, StorageError
from spatialforge.runner.storage.base import ArtifactStore, ObjectInfo, sha256_file, sha256_hex

MB = 1024 * 1024
_NOT_FOUND = {"404", "NoSuchKey", "NotFound", "NoSuchBucket"}


def split_s3(uri: str) -> tuple[str, str]:
    """s3://bucket/key -> (bucket, key)."""
    parsed = urlparse(uri)
    if parsed.scheme != "s3" or not parsed.netloc:
        raise ValueError(f"not an s3:// URI: {uri}")
    return parsed.netloc, parsed.path.lstrip("/")


def _read_secret(folder: Path, *names: str) -> str | None:
    for name in names:
        path = folder / name
        if path.is_file():
            return path.read_text().strip()
    return None


@dataclass(kw_only=True)
class S3Settings:
    """How to reach the object store; `from_env()` reads the variables above."""

    endpoint_url: str | None = None
    region: str = "us-east-1"
    access_key: str | None = field(default=None, repr=False)
    secret_key: str | None = field(default=None, repr=False)
    retry_mode: str = "adaptive"
    max_attempts: int = 8
    multipart_threshold: int = 16 * MB
    multipart_chunksize: int = 16 * MB
    max_concurrency: int = 8

    @classmethod
    def from_env(cls, env: dict[str, str] | None = None) -> S3Settings:
        env = dict(os.environ if env is None else env)
        access = secret = None
        secret_dir = env.get("SPATIALFORGE_S3_SECRET_DIR")
        if secret_dir:
            folder = Path(secret_dir)
            access = _read_secret(folder, "AWS_ACCESS_KEY_ID", "accesskey", "access-key")
            secret = _read_secret(folder, "AWS_SECRET_ACCESS_KEY", "secretkey", "secret-key")
        return cls(
            endpoint_url=env.get("SPATIALFORGE_S3_ENDPOINT")
            or env.get("AWS_ENDPOINT_URL_S3")
            or env.get("AWS_ENDPOINT_URL"),
            region=env.get("AWS_REGION") or env.get("AWS_DEFAULT_REGION") or "us-east-1",
            access_key=access or env.get("AWS_ACCESS_KEY_ID"),
            secret_key=secret or env.get("AWS_SECRET_ACCESS_KEY"),
            retry_mode=env.get("SPATIALFORGE_S3_RETRY_MODE", "adaptive"),
        )


class S3Store(ArtifactStore):
    """boto3 client with adaptive retries; uploads and downloads use TransferConfig multipart."""

    scheme = "s3"

    def __init__(self, settings: S3Settings | None = None) -> None:
        import boto3
        from boto3.s3.transfer import TransferConfig
        from botocore.config import Config

        self.settings = settings or S3Settings.from_env()
        s = self.settings
        config = Config(
            region_name=s.region,
            retries={"mode": s.retry_mode, "max_attempts": s.max_attempts},
            s3={"addressing_style": "path" if s.endpoint_url else "auto"},
            request_checksum_calculation="when_supported",
            response_checksum_validation="when_supported",
            max_pool_connections=max(10, s.max_concurrency * 2),
        )
        self.client = boto3.session.Session().client(
            "s3",
            endpoint_url=s.endpoint_url,
            aws_access_key_id=s.access_key,
            aws_secret_access_key=s.secret_key,
            config=config,
        )
        self.transfer = TransferConfig(
            multipart_threshold=s.multipart_threshold,
            multipart_chunksize=s.multipart_chunksize,
            max_concurrency=s.max_concurrency,
        )

    def _error(self, exc: Exception, uri: str, action: str) -> Exception:
        from botocore.exceptions import ClientError

        if isinstance(exc, ClientError):
            code = str(exc.response.get("Error", {}).get("Code", ""))
            if code in _NOT_FOUND:
                return InputNotFoundError(f"no such object: {uri}")
        return StorageError(f"{action} {uri} failed: {exc}")

    def get(self, uri: str) -> bytes:
        bucket, key = split_s3(uri)
        buf = io.BytesIO()
        try:
            self.client.download_fileobj(bucket, key, buf, Config=self.transfer)
        except Exception as exc:  # botocore raises several unrelated classes
            raise self._error(exc, uri, "get") from exc
        return buf.getvalue()

    def open(self, uri: str) -> BinaryIO:
        return io.BytesIO(self.get(uri))

    def download(self, uri: str, path: Path) -> Path:
        bucket, key = split_s3(uri)
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        try:
            self.client.download_file(bucket, key, str(path), Config=self.transfer)
        except Exception as exc:
            raise self._error(exc, uri, "download") from exc
        return path

    def _extra(self, digest: str, content_type: str | None) -> dict[str, Any]:
        extra: dict[str, Any] = {"Metadata": {"sha256": digest}, "ChecksumAlgorithm": "CRC32"}
        if content_type:
            extra["ContentType"] = content_type
        return extra

    def put(self, uri: str, data: bytes, *, content_type: str | None = None) -> str:
        bucket, key = split_s3(uri)
        digest = sha256_hex(data)
        try:
            self.client.upload_fileobj(
                io.BytesIO(data), bucket, key, ExtraArgs=self._extra(digest, content_type), Config=self.transfer
            )
        except Exception as exc:
            raise self._error(exc, uri, "put") from exc
        return digest

    def put_file(self, uri: str, path: Path, *, content_type: str | None = None) -> str:
        bucket, key = split_s3(uri)
        digest = sha256_file(Path(path))
        try:
            self.client.upload_file(
                str(path), bucket, key, ExtraArgs=self._extra(digest, content_type), Config=self.transfer
            )
        except Exception as exc:
            raise self._error(exc, uri, "put") from exc
        return digest

    def list(self, prefix: str) -> list[ObjectInfo]:
        bucket, key = split_s3(prefix)
        out: list[ObjectInfo] = []
        try:
            for page in self.client.get_paginator("list_objects_v2").paginate(Bucket=bucket, Prefix=key):
                for obj in page.get("Contents", []):
                    if not obj["Key"].endswith("/"):
                        out.append(ObjectInfo(uri=f"s3://{bucket}/{obj['Key']}", size=int(obj["Size"])))
        except Exception as exc:
            raise self._error(exc, prefix, "list") from exc
        return sorted(out, key=lambda o: o.uri)

    def stat(self, uri: str) -> ObjectInfo | None:
        bucket, key = split_s3(uri)
        try:
            head = self.client.head_object(Bucket=bucket, Key=key)
        except Exception as exc:
            err = self._error(exc, uri, "head")
            if isinstance(err, InputNotFoundError):
                return None
            raise err from exc
        return ObjectInfo(uri=uri, size=int(head["ContentLength"]))

    def close(self) -> None:
        self.client.close()
