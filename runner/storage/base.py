"""ArtifactStore: the runner's only way to read inputs and write results.

URIs are absolute (`s3://bucket/key`, `file:///path`); a URI ending in "/" is a prefix.
Implementations: `S3Store` (boto3), `LocalStore` (file://), `MemoryStore` (unit tests).
"""

from __future__ import annotations

import abc
import hashlib
import io
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO


@dataclass(frozen=True, kw_only=True)
class ObjectInfo:
    """One listed object."""

    uri: str
    size: int


class ArtifactStore(abc.ABC):
    """Get, put, list and test objects addressed by URI."""

    scheme: str = ""

    @abc.abstractmethod
    def get(self, uri: str) -> bytes:
        """The whole object; raises InputNotFoundError when it does not exist."""

    @abc.abstractmethod
    def put(self, uri: str, data: bytes, *, content_type: str | None = None) -> str:
        """Store bytes at uri; returns the hex SHA-256 of what was stored."""

    @abc.abstractmethod
    def list(self, prefix: str) -> list[ObjectInfo]:
        """Objects under a prefix (recursive), sorted by URI."""

    @abc.abstractmethod
    def stat(self, uri: str) -> ObjectInfo | None:
        """The object's info, or None when it does not exist."""

    @abc.abstractmethod
    def delete(self, uri: str) -> None:
        """Remove an object; a missing one is not an error."""

    @abc.abstractmethod
    def put_if_absent(self, uri: str, data: bytes) -> bool:
        """Create the object only if nothing is at `uri` (atomically: of two writers, exactly
        one gets True); False when it exists. What the publish fence is made of (staging.py)."""

    def delete_prefix(self, prefix: str) -> int:
        """Remove every object under a prefix; returns how many."""
        objects = self.list(prefix)
        for obj in objects:
            self.delete(obj.uri)
        return len(objects)

    def move(self, src: str, dst: str) -> None:
        """Rename an object (stores override this with a rename or a server-side copy)."""
        self.put(dst, self.get(src))
        self.delete(src)

    def check_writable(self, prefix: str) -> None:
        """Raise InvalidOutputError when nothing can be written under `prefix` (default: a probe)."""
        probe = join_uri(prefix, ".write-probe")
        self.put(probe, b"")
        self.delete(probe)

    def remove_empty_folder(self, prefix: str) -> None:
        """Remove an empty folder (only file stores have folders; a no-op elsewhere)."""

    def exists(self, uri: str) -> bool:
        return self.stat(uri) is not None

    def open(self, uri: str) -> BinaryIO:
        """A readable binary file of the object (the default reads it whole)."""
        return io.BytesIO(self.get(uri))

    def read_head(self, uri: str, size: int) -> bytes:
        """The object's first `size` bytes (all of it when smaller): enough to read a header."""
        with self.open(uri) as fh:
            return fh.read(size)

    def put_file(self, uri: str, path: Path, *, content_type: str | None = None) -> str:
        """Upload a local file; returns its hex SHA-256."""
        return self.put(uri, Path(path).read_bytes(), content_type=content_type)

    def download(self, uri: str, path: Path) -> Path:
        """Copy an object to a local file."""
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(self.get(uri))
        return path

    def close(self) -> None:
        """Release connections (no-op by default)."""


def sha256_hex(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def sha256_file(path: Path, chunk: int = 1 << 20) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        while block := fh.read(chunk):
            digest.update(block)
    return digest.hexdigest()


def join_uri(prefix: str, *parts: str) -> str:
    """prefix + "/" + parts, without doubled slashes."""
    out = prefix.rstrip("/")
    for part in parts:
        out += "/" + part.strip("/")
    return out
