"""A de-duplicating work queue of resource keys, as controller-runtime's workqueue.

A key is queued at most once; a key that changes while a worker holds it is queued again
when the worker is done, so each resource is reconciled by one worker at a time and never
misses a change.
"""

from __future__ import annotations

import asyncio
import datetime as dt

from spatialforge.operator.cache import Key


class WorkQueue:
    def __init__(self) -> None:
        self._queue: asyncio.Queue[Key] = asyncio.Queue()
        self._queued: set[Key] = set()
        self._active: set[Key] = set()
        self._dirty: set[Key] = set()
        self._timers: dict[Key, asyncio.TimerHandle] = {}

    def add(self, key: Key) -> None:
        if key in self._active:
            self._dirty.add(key)  # reconcile again after the running pass
        elif key not in self._queued:
            self._queued.add(key)
            self._queue.put_nowait(key)

    def add_after(self, key: Key, seconds: float) -> None:
        """Queue `key` in `seconds`; an earlier pending timer for the key wins over a later one."""
        loop = asyncio.get_running_loop()
        when = loop.time() + max(0.05, seconds)
        timer = self._timers.get(key)
        if timer is not None and not timer.cancelled() and timer.when() <= when:
            return
        if timer is not None:
            timer.cancel()
        self._timers[key] = loop.call_at(when, self._fire, key)

    def add_at(self, key: Key, when: dt.datetime) -> None:
        self.add_after(key, (when - dt.datetime.now(dt.UTC)).total_seconds())

    def _fire(self, key: Key) -> None:
        self._timers.pop(key, None)
        self.add(key)

    async def get(self) -> Key:
        key = await self._queue.get()
        self._queued.discard(key)
        self._active.add(key)
        return key

    def done(self, key: Key) -> None:
        self._active.discard(key)
        if key in self._dirty:
            self._dirty.discard(key)
            self.add(key)

    def forget(self, key: Key) -> None:
        timer = self._timers.pop(key, None)
        if timer is not None:
            timer.cancel()
