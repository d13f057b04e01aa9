"""One shard attempt's outputs: staged under an attempt prefix, published at the end, else removed.

    <base>/.staging/shard-<i>/<attempt>/<files>   while the attempt runs (crds.layout.staging_prefix)
    <base>/shard-<i>/<files>, then manifest.json  once it succeeds (files moved, manifest last)

A failed attempt deletes its staging folder; one that was killed (SIGKILL, OOM) leaves it, and
the next attempt of the shard deletes it before it starts, together with any result files that
have no manifest (a publish cut short). So nothing that looks like a result outlives a failure:
a shard folder holds either nothing or files and their manifest.

The publish fence (a `Publisher` given): before its first write to the shard folder, an attempt
creates the shard's claim object (crds.layout.claim_uri) with If-None-Match, holding its
publisher's name (`job` for every pod of a resource's Job, `pool/<attempt>` for a hand-off).
The first claim wins for good: a publisher that finds another's claim writes nothing there
(PublishFenced) and, when allowed to wait, answers with the holder's manifest once it is written.
A publisher with a deadline (a hand-off the operator stops waiting for then) does not claim
after it. So of a pool attempt and the Job that replaces it, at most one ever publishes.
"""

from __future__ import annotations

import json
import logging
import posixpath
import time
from dataclasses import dataclass
from typing import Any

from spatialforge.crds.layout import MANIFEST
from spatialforge.runner.errors import InputNotFoundError, RunnerError
from spatialforge.runner.storage.base import ArtifactStore, join_uri

log = logging.getLogger(__name__)


@dataclass(frozen=True, kw_only=True)
class Publisher:
    """Who publishes a resource's results: its uid, a name shared by the attempts that may
    replace one another (`job`, or `pool/<hand-off attempt>`), a deadline for claiming (Unix
    seconds), and how long a fenced-out publisher waits for the holder's manifest (0: not at all)."""

    uid: str
    name: str
    deadline: float | None = None
    wait_seconds: float = 0.0


class PublishFenced(RunnerError):
    """Another publisher holds the shard's claim (or this one's deadline passed): nothing of
    this attempt was published."""

    def __init__(self, message: str, *, holder: str | None) -> None:
        super().__init__(message)
        self.holder = holder


class StagedOutput:
    """Writes of one shard attempt; `publish` makes them the shard's result."""

    def __init__(self, store: ArtifactStore, *, final_prefix: str, staging_prefix: str, attempt: str,
                 claim_uri: str | None = None, publisher: Publisher | None = None) -> None:
        self.store = store
        self.final_prefix = final_prefix.rstrip("/")
        self.staging_root = staging_prefix.rstrip("/")
        self.attempt_prefix = join_uri(self.staging_root, attempt)
        self.claim_uri = claim_uri if publisher is not None else None
        self.publisher = publisher
        self._names: list[str] = []

    def holder(self) -> str | None:
        """The publisher holding the shard's claim, or None (unclaimed, or no fence)."""
        if self.claim_uri is None:
            return None
        try:
            return self.store.get(self.claim_uri).decode()
        except InputNotFoundError:
            return None

    def _fenced_out(self) -> str | None:
        """The other publisher holding the claim, if any."""
        holder = self.holder()
        return holder if holder is not None and self.publisher is not None and holder != self.publisher.name else None

    def claim(self) -> None:
        """Take the shard's claim, or find it ours already; PublishFenced otherwise."""
        if self.claim_uri is None or self.publisher is None:
            return
        me = self.publisher
        if me.deadline is not None and time.time() > me.deadline:
            raise PublishFenced(f"{me.name} passed its publish deadline: another publisher replaces it", holder=None)
        if self.store.put_if_absent(self.claim_uri, me.name.encode()):
            return
        holder = self.holder()
        if holder != me.name:
            raise PublishFenced(f"the results of {self.final_prefix} are published by {holder}, not {me.name}",
                                holder=holder)

    def published_by_holder(self, fenced: PublishFenced) -> tuple[str, dict[str, Any]]:
        """(manifest URI, manifest) of the claim's holder, waited for up to the publisher's
        `wait_seconds`; `fenced` again when it does not come, or when this publisher may not
        wait (0: a pool run, whose operator has stopped listening)."""
        uri = self.final_uri(MANIFEST)
        wait = self.publisher.wait_seconds if self.publisher is not None else 0.0
        if wait <= 0:
            raise fenced
        until = time.monotonic() + wait
        while True:
            if fenced.holder is not None and self.store.exists(uri):
                return uri, json.loads(self.store.get(uri))
            if time.monotonic() >= until:
                raise fenced
            time.sleep(min(1.0, max(0.0, until - time.monotonic())))

    def check(self) -> None:
        """The output location can take files (InvalidOutputError otherwise). Before the model loads."""
        self.store.check_writable(self.attempt_prefix + "/")

    def clear_leftovers(self) -> int:
        """Delete earlier attempts' staging and result files without a manifest; returns how
        many. Nothing while another publisher holds the claim: those files are its own."""
        holder = self._fenced_out()
        if holder is not None:
            log.info("the results under %s are claimed by %s: nothing of theirs is removed", self.final_prefix, holder)
            return 0
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
        """Claim the shard (PublishFenced when another publisher has), replace its result with
        the staged files, then write the manifest; returns its URI."""
        self.claim()
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
