"""S3 (and MinIO) store through boto3: retries, multipart transfers, checksums.

Configuration comes from `RunnerSettings` (runner/settings.py): endpoint, region, keys or a
mounted secret folder (whose files win over the key variables), else boto3's own chain (IRSA,
instance profile).
"""

from __future__ import annotations

import io
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, BinaryIO
from urllib.parse import urlparse

from spatialforge.runner.errors import InputNotFoundError, InvalidOutputError, StorageError
from spatialforge.runner.settings import RunnerSettings
from spatialforge.runner.storage.base import ArtifactStore, ObjectInfo, sha256_file, sha256_hex

MB = 1024 * 1024
_NOT_FOUND = {"404", "NoSuchKey", "NotFound", "NoSuchBucket"}
_DENIED = {"AccessDenied", "AllAccessDisabled", "403"}


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
    """How to reach the object store (boto3 client and transfer settings)."""

    endpoint_url: str | None = None
    region: str = "us-east-1"
    access_key: str | None = field(default=None, repr=False)
    secret_key: str | None = field(default=None, repr=False)
    retry_mode: str = "adaptive"
    max_attempts: int = 8
    multipart_threshold: int = 16 * MB
    multipart_chunksize: int = 16 * MB
    max_concurrency: int = 8
    object_tagging: str = ""
    """Tags (URL-encoded) set on every object written, e.g. the results retention tag."""

    @classmethod
    def from_runner(cls, settings: RunnerSettings) -> S3Settings:
        """The object-store part of the runner's settings (the secret folder wins over the variables)."""
        access = settings.s3_access_key
        secret = settings.s3_secret_key.get_secret_value() if settings.s3_secret_key else None
        if settings.s3_secret_dir:
            folder = Path(settings.s3_secret_dir)
            access = _read_secret(folder, "AWS_ACCESS_KEY_ID", "accesskey", "access-key") or access
            secret = _read_secret(folder, "AWS_SECRET_ACCESS_KEY", "secretkey", "secret-key") or secret
        return cls(
            endpoint_url=settings.s3_endpoint,
            region=settings.s3_region,
            access_key=access,
            secret_key=secret,
            retry_mode=settings.s3_retry_mode,
            object_tagging=settings.s3_object_tagging,
        )


class S3Store(ArtifactStore):
    """boto3 client with adaptive retries; uploads and downloads use TransferConfig multipart."""

    scheme = "s3"

    def __init__(self, settings: S3Settings) -> None:
        import boto3
        from boto3.s3.transfer import TransferConfig
        from botocore.config import Config

        self.settings = settings
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

        code = ""
        if isinstance(exc, ClientError):
            code = str(exc.response.get("Error", {}).get("Code", ""))
            if code in _NOT_FOUND:
                return InputNotFoundError(f"no such object: {uri}")
        return StorageError(f"{action} {uri} failed: {exc}", code=code)

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

    def read_head(self, uri: str, size: int) -> bytes:
        """A ranged GET: a header check must not download the whole object."""
        bucket, key = split_s3(uri)
        try:
            return self.client.get_object(Bucket=bucket, Key=key, Range=f"bytes=0-{max(size, 1) - 1}")["Body"].read()
        except Exception as exc:  # botocore raises several unrelated classes
            raise self._error(exc, uri, "get") from exc

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
        if self.settings.object_tagging:
            extra["Tagging"] = self.settings.object_tagging
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

    def put_if_absent(self, uri: str, data: bytes) -> bool:
        """PutObject with If-None-Match: * (S3 and MinIO refuse it with 412 when the key exists).
        A 409 (another conditional write to the key in flight) is retried until one has won."""
        from botocore.exceptions import ClientError

        bucket, key = split_s3(uri)
        for delay in (0.05, 0.1, 0.2, 0.4, 0.8, 1.6, 0.0):
            try:
                self.client.put_object(Bucket=bucket, Key=key, Body=data, IfNoneMatch="*",
                                       ContentType="text/plain")
                return True
            except ClientError as exc:
                status = exc.response.get("ResponseMetadata", {}).get("HTTPStatusCode")
                code = str(exc.response.get("Error", {}).get("Code", ""))
                if status == 412 or code == "PreconditionFailed":
                    return False
                if (status == 409 or code == "ConditionalRequestConflict") and delay:
                    time.sleep(delay)
                    continue
                raise self._error(exc, uri, "conditional put") from exc
            except Exception as exc:
                raise self._error(exc, uri, "conditional put") from exc
        raise StorageError(f"conditional put {uri}: still conflicting after retries")

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

    def check_writable(self, prefix: str) -> None:
        """A probe object written and removed; no bucket or no permission is InvalidOutputError."""
        probe = f"{prefix.rstrip('/')}/.write-probe"
        try:
            self.put(probe, b"")
            self.delete(probe)
        except InputNotFoundError as exc:
            raise InvalidOutputError(f"output {prefix} cannot be written: the bucket does not exist") from exc
        except StorageError as exc:
            if exc.code in _DENIED:
                raise InvalidOutputError(f"output {prefix} cannot be written: {exc.code}") from exc
            raise

    def delete(self, uri: str) -> None:
        bucket, key = split_s3(uri)
        try:
            self.client.delete_object(Bucket=bucket, Key=key)
        except Exception as exc:
            err = self._error(exc, uri, "delete")
            if not isinstance(err, InputNotFoundError):
                raise err from exc

    def delete_prefix(self, prefix: str) -> int:
        objects = self.list(prefix)
        for start in range(0, len(objects), 1000):  # DeleteObjects takes 1000 keys a call
            chunk = objects[start : start + 1000]
            bucket = split_s3(chunk[0].uri)[0]
            try:
                self.client.delete_objects(
                    Bucket=bucket, Delete={"Objects": [{"Key": split_s3(o.uri)[1]} for o in chunk], "Quiet": True}
                )
            except Exception as exc:
                raise self._error(exc, prefix, "delete") from exc
        return len(objects)

    def move(self, src: str, dst: str) -> None:
        """Server-side copy in one request (metadata and content type kept; objects up to 5 GB,
        where a managed multipart copy would drop the sha256 metadata), then delete the source."""
        sb, sk = split_s3(src)
        db, dk = split_s3(dst)
        try:
            self.client.copy_object(Bucket=db, Key=dk, CopySource={"Bucket": sb, "Key": sk}, MetadataDirective="COPY")
        except Exception as exc:
            raise self._error(exc, src, "copy") from exc
        self.delete(src)

    def close(self) -> None:
        self.client.close()
