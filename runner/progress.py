"""Progress: the work reports (done, total, stage); sinks show it on a terminal or patch the CR."""

from __future__ import annotations

import datetime as dt
import sys
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TextIO


@dataclass(frozen=True, kw_only=True)
class Snapshot:
    """One reading of a shard's progress (the fields of crds' ShardProgress)."""

    done: int
    total: int
    stage: str
    skipped: int = 0
    """Of `done`, the invalid images skipped (spec.onInvalidImage: Skip)."""
    floor_area_m2: float | None = None
    """Floor plan summary (ReconstructionJob), once one was produced; the operator copies it to the status."""
    room_count: int | None = None
    updated_at: dt.datetime = field(default_factory=lambda: dt.datetime.now(dt.timezone.utc))

    def as_status(self) -> dict[str, object]:
        """camelCase body for `status.progress.shards.<index>`."""
        body: dict[str, object] = {
            "done": self.done,
            "total": self.total,
            "stage": self.stage[:64],
            "skipped": self.skipped,
            "updatedAt": self.updated_at.replace(microsecond=0).isoformat().replace("+00:00", "Z"),
        }
        if self.floor_area_m2 is not None:
            body["floorAreaM2"] = round(float(self.floor_area_m2), 3)
        if self.room_count is not None:
            body["roomCount"] = int(self.room_count)
        return body


class Progress:
    """Thread-safe progress of one shard; listeners are called on every change."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._snap = Snapshot(done=0, total=0, stage="starting")
        self._listeners: list[Callable[[Snapshot], None]] = []
        self.version = 0

    def subscribe(self, listener: Callable[[Snapshot], None]) -> None:
        self._listeners.append(listener)

    def update(
        self, *, done: int | None = None, total: int | None = None, stage: str | None = None, skipped: int | None = None,
        floor_area_m2: float | None = None, room_count: int | None = None,
    ) -> None:
        with self._lock:
            old = self._snap
            self._snap = Snapshot(
                done=old.done if done is None else done,
                total=old.total if total is None else total,
                stage=old.stage if stage is None else stage,
                skipped=old.skipped if skipped is None else skipped,
                floor_area_m2=old.floor_area_m2 if floor_area_m2 is None else floor_area_m2,
                room_count=old.room_count if room_count is None else room_count,
            )
            self.version += 1
            snap = self._snap
        for listener in self._listeners:
            listener(snap)

    def advance(self, n: int = 1, *, skipped: int = 0) -> None:
        """n more items done, `skipped` of them skipped."""
        with self._lock:
            done, skips = self._snap.done + n, self._snap.skipped + skipped
        self.update(done=done, skipped=skips)

    @property
    def snapshot(self) -> Snapshot:
        with self._lock:
            return self._snap


class TerminalBar:
    """A one-line progress bar on a terminal, redrawn at most 10 times a second."""

    def __init__(self, *, stream: TextIO | None = None, width: int = 30, label: str = "") -> None:
        self.stream = stream or sys.stderr
        self.width = width
        self.label = label
        self.started = time.monotonic()
        self._last = 0.0
        self._drawn = False

    def __call__(self, snap: Snapshot) -> None:
        now = time.monotonic()
        interval = 0.1 if self.stream.isatty() else 2.0
        final = snap.total > 0 and snap.done >= snap.total
        if now - self._last < interval and not final:
            return
        self._last = now
        frac = snap.done / snap.total if snap.total else 0.0
        filled = int(frac * self.width)
        elapsed = now - self.started
        rate = snap.done / elapsed if elapsed > 0 else 0.0
        bar = "#" * filled + "-" * (self.width - filled)
        line = f"{self.label}{snap.stage:<10} [{bar}] {snap.done}/{snap.total} {rate:5.2f}/s {elapsed:6.1f}s"
        if self.stream.isatty():
            self.stream.write("\r" + line)
        else:
            self.stream.write(line + "\n")
        self.stream.flush()
        self._drawn = True

    def close(self) -> None:
        if self._drawn and self.stream.isatty():
            self.stream.write("\n")
            self.stream.flush()
