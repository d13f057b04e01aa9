"""Object stores addressed by URI scheme: `open_store(uri, settings)` picks the implementation."""

from __future__ import annotations

from typing import TYPE_CHECKING

from spatialforge.runner.storage.base import ArtifactStore, ObjectInfo, join_uri, sha256_hex
from spatialforge.runner.storage.local import LocalStore
from spatialforge.runner.storage.memory import MemoryStore

if TYPE_CHECKING:
    from spatialforge.runner.settings import RunnerSettings

__all__ = ["ArtifactStore", "LocalStore", "MemoryStore", "ObjectInfo", "join_uri", "open_store", "sha256_hex"]


def open_store(uri: str, settings: RunnerSettings) -> ArtifactStore:
    """The store for a URI's scheme (s3:// or file://); S3 is configured from `settings`."""
    if uri.startswith("s3://"):
        from spatialforge.runner.storage.s3 import S3Settings, S3Store

        return S3Store(S3Settings.from_runner(settings))
    if uri.startswith("file://"):
        return LocalStore()
    raise ValueError(f"unsupported URI scheme: {uri[:80]}")
