"""Object stores addressed by URI scheme: `open_store(uri)` picks the implementation."""

from __future__ import annotations

from spatialforge.runner.storage.base import ArtifactStore, ObjectInfo, join_uri, sha256_hex
from spatialforge.runner.storage.local import LocalStore
from spatialforge.runner.storage.memory import MemoryStore

__all__ = ["ArtifactStore", "LocalStore", "MemoryStore", "ObjectInfo", "join_uri", "open_store", "sha256_hex"]


def open_store(uri: str) -> ArtifactStore:
    """The store for a URI's scheme (s3:// or file://)."""
    if uri.startswith("s3://"):
        from spatialforge.runner.storage.s3 import S3Store

        return S3Store()
    if uri.startswith("file://"):
        return LocalStore()
    raise ValueError(f"unsupported URI scheme: {uri[:80]}")
