"""One shard attempt's outputs: staged under an attempt prefix, published at the end, else removed.

    <base>/.staging/shard-<i>/<attempt>/<files>   while the attempt runs (crds.layout.staging_prefix)
    <base>/shard-<i>/<files>, then manifest.json  once it succeeds (files moved, manifest last)

A failed attempt deletes its staging folder; one that was killed (SIGKILL, OOM) leaves it, and
the next attempt of the shard deletes it before it starts, together with any result files that
have no manifest (a publish cut short). So nothing that looks like a result outlives a failure:
a shard folder holds either nothing or files and their manifest.
"""

from __future__ import annotations

import logging
import posixpath

from spatialforge.crds.layout import MANIFEST
from spatialforge.runner.storage.base import ArtifactStore, join_uri

log = logging.getLogger(__name__)


class StagedOutput:
    """Writes of one shard attempt; `publish` makes them the shard's result."""

    def __init__(self, store: ArtifactStore, *, final_prefix: str, staging_prefix: str, attempt: str) -> None:
        self.store = store
        self.final_prefix = final_prefix.rstrip("/")
        self.staging_root = staging_prefix.rstrip("/")
        self.attempt_prefix = join_uri(self.staging_root, attempt)
        self._names: list[str] = []

    def check(self) -> None:
        """The output location can take files (InvalidOutputError otherwise). Before the model loads."""
        self.store.check_writable(self.attempt_prefix + "/")

    def clear_leftovers(self) -> int:
        """Delete earlier attempts' staging and result files without a manifest; returns how many."""
        removed = self.store.delete_prefix(self.staging_root + "/")
        if not self.store.exists(join_uri(self.final_prefix, MANIFEST)):
            removed += self.store.delete_prefix(self.final_prefix + "/")
        if removed:
            log.info("removed %d leftover object(s) of an earlier attempt under %s", removed, self.final_prefix)
        return removed

    def final_uri(self, name: str) -> str:
        return join_uri(self.final_prefix, name)

    def put(self, name: str, data: bytes, *, content_type: str | None = None) -> tuple[str, str]:
        """Stage one output; returns (its URI once published, SHA-256)."""
        digest = self.store.put(join_uri(self.attempt_prefix, name), data, content_type=content_type)
        self._names.append(name)
        return self.final_uri(name), digest

    def publish(self, manifest: bytes) -> str:
        """Replace the shard's result with the staged files, then write the manifest; returns its URI."""
        self.store.delete_prefix(self.final_prefix + "/")  # an older result (a local re-run) goes first
        for name in self._names:
            self.store.move(join_uri(self.attempt_prefix, name), self.final_uri(name))
        uri = self.final_uri(MANIFEST)
        self.store.put(uri, manifest, content_type="application/json")
        self._cleanup()
        return uri

    def discard(self) -> None:
        """Remove this attempt's staged files (best effort: the next attempt clears what is left)."""
        try:
            self._cleanup()
        except Exception as exc:  # noqa: BLE001 - the failure being reported matters more
            log.warning("could not remove staged outputs under %s: %s", self.attempt_prefix, exc)

    def _cleanup(self) -> None:
        self.store.delete_prefix(self.attempt_prefix + "/")
        self.store.remove_empty_folder(self.staging_root + "/")
        self.store.remove_empty_folder(posixpath.dirname(self.staging_root) + "/")
