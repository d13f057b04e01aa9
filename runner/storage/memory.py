"""In-memory twin of the stores, for unit tests of code that only needs an ArtifactStore."""

from __future__ import annotations

import threading

from spatialforge.runner.errors import InputNotFoundError
from spatialforge.runner.storage.base import ArtifactStore, ObjectInfo, sha256_hex


class MemoryStore(ArtifactStore):
    """A dict of URI -> bytes; records the order of puts (to check manifest-last)."""

    scheme = "memory"

    def __init__(self) -> None:
        self.objects: dict[str, bytes] = {}
        self.put_order: list[str] = []
        self._lock = threading.Lock()

    def get(self, uri: str) -> bytes:
        try:
            return self.objects[uri]
        except KeyError as exc:
            raise InputNotFoundError(f"no such object: {uri}") from exc

    def put(self, uri: str, data: bytes, *, content_type: str | None = None) -> str:
        with self._lock:
            self.objects[uri] = bytes(data)
            self.put_order.append(uri)
        return sha256_hex(data)

    def put_if_absent(self, uri: str, data: bytes) -> bool:
        with self._lock:
            if uri in self.objects:
                return False
            self.objects[uri] = bytes(data)
            self.put_order.append(uri)
        return True

    def delete(self, uri: str) -> None:
        with self._lock:
            self.objects.pop(uri, None)

    def list(self, prefix: str) -> list[ObjectInfo]:
        return sorted(
            (ObjectInfo(uri=u, size=len(b)) for u, b in self.objects.items() if u.startswith(prefix)),
            key=lambda o: o.uri,
        )

    def stat(self, uri: str) -> ObjectInfo | None:
        data = self.objects.get(uri)
        return None if data is None else ObjectInfo(uri=uri, size=len(data))
