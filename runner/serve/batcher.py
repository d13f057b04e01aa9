"""A dynamic batcher in the manner of Triton's: wait up to `max_wait` for up to `max_batch` requests.

Requests are admitted against a bound (`max_queue`) before any work is done for them, so a
full server refuses at once (503) instead of queueing without bound. The oldest request sets
the batch's deadline and its input shape; requests of that shape join it in arrival order
(others wait for a later batch, so every forward pass is one dense batch). The model runs
in one dedicated thread, so the event loop keeps accepting and decoding meanwhile.
"""

from __future__ import annotations

import asyncio
import collections
import concurrent.futures as cf
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import numpy as np

from spatialforge.aio import within

RunBatch = Callable[[Sequence[np.ndarray], Sequence[tuple[int, int]]], list[np.ndarray]]


class QueueFull(Exception):
    """The server holds `max_queue` requests already; the client should retry later."""

    def __init__(self, retry_after: int) -> None:
        super().__init__(f"queue full; retry after {retry_after} s")
        self.retry_after = retry_after


@dataclass(kw_only=True)
class _Request:
    pixels: np.ndarray
    size: tuple[int, int]
    future: asyncio.Future[np.ndarray]
    enqueued: float = field(default_factory=time.monotonic)


@dataclass(kw_only=True)
class BatchStats:
    """What one dispatched batch looked like (for metrics)."""

    size: int
    seconds: float
    waited: float


class DynamicBatcher:
    """Collects requests into batches and runs them on `run_batch` in a worker thread."""

    def __init__(
        self,
        run_batch: RunBatch,
        *,
        max_batch: int,
        max_wait: float,
        max_queue: int,
        on_batch: Callable[[BatchStats], None] | None = None,
    ) -> None:
        if max_batch < 1 or max_queue < 1 or max_wait < 0:
            raise ValueError("max_batch and max_queue must be >= 1, max_wait >= 0")
        self.run_batch = run_batch
        self.max_batch = max_batch
        self.max_wait = max_wait
        self.max_queue = max_queue
        self.on_batch = on_batch
        self.admitted = 0  # requests holding a slot: being decoded, queued or in the running batch
        self._queue: collections.deque[_Request] = collections.deque()
        self._wakeup = asyncio.Event()
        self._executor = cf.ThreadPoolExecutor(1, thread_name_prefix="sf-model")
        self._task: asyncio.Task[None] | None = None
        self._last_batch_seconds = 0.0

    # --- admission -------------------------------------------------------------------------

    def admit(self) -> None:
        """Take a slot or raise QueueFull; pair with `release()` (submit() releases on its own)."""
        if self.admitted >= self.max_queue:
            raise QueueFull(self.retry_after())
        self.admitted += 1

    def release(self) -> None:
        self.admitted = max(0, self.admitted - 1)

    def retry_after(self) -> int:
        """Seconds until the queue has likely drained by one batch's worth (at least 1)."""
        batches = max(1, self.admitted // self.max_batch)
        return max(1, round(batches * (self._last_batch_seconds + self.max_wait)))

    @property
    def queued(self) -> int:
        return len(self._queue)

    # --- requests ----------------------------------------------------------------------------

    async def submit(self, pixels: np.ndarray, size: tuple[int, int]) -> np.ndarray:
        """Queue one admitted request and wait for its depth; releases the slot when done."""
        try:
            future: asyncio.Future[np.ndarray] = asyncio.get_running_loop().create_future()
            self._queue.append(_Request(pixels=pixels, size=size, future=future))
            self._wakeup.set()
            return await future
        finally:
            self.release()

    async def run_now(self, pixels: Sequence[np.ndarray], sizes: Sequence[tuple[int, int]]) -> list[np.ndarray]:
        """Run one batch directly on the model thread (the warm-up), bypassing the queue."""
        loop = asyncio.get_running_loop()
        return await loop.run_in_executor(self._executor, self.run_batch, list(pixels), list(sizes))

    # --- the loop ---------------------------------------------------------------------------

    def start(self) -> None:
        if self._task is None:
            self._task = asyncio.get_running_loop().create_task(self._loop(), name="sf-batcher")

    async def stop(self) -> None:
        """Stop after the queue is empty (callers drain requests first), then free the thread."""
        if self._task is not None:
            self._task.cancel()
            try:
                await self._task
            except asyncio.CancelledError:
                pass
            self._task = None
        for req in self._queue:
            if not req.future.done():
                req.future.set_exception(RuntimeError("server stopped"))
        self._queue.clear()
        self._executor.shutdown(wait=True)

    async def _loop(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            while not self._queue:
                self._wakeup.clear()
                await self._wakeup.wait()
            batch = await self._collect()
            if not batch:
                continue
            t0 = time.monotonic()
            waited = t0 - batch[0].enqueued
            try:
                depths = await loop.run_in_executor(
                    self._executor, self.run_batch, [r.pixels for r in batch], [r.size for r in batch]
                )
            except Exception as exc:  # noqa: BLE001 - every waiter gets the error; the loop goes on
                for r in batch:
                    if not r.future.done():
                        r.future.set_exception(exc)
                continue
            self._last_batch_seconds = time.monotonic() - t0
            for r, depth in zip(batch, depths, strict=True):
                if not r.future.done():  # a client that went away has cancelled its future
                    r.future.set_result(depth)
            if self.on_batch is not None:
                self.on_batch(BatchStats(size=len(batch), seconds=self._last_batch_seconds, waited=waited))

    async def _collect(self) -> list[_Request]:
        """Wait until the oldest request's deadline or a full batch of its shape, then take it."""
        head = self._queue[0]
        deadline = head.enqueued + self.max_wait
        shape = head.pixels.shape
        while self._same_shape(shape) < self.max_batch:
            left = deadline - time.monotonic()
            if left <= 0:
                break
            self._wakeup.clear()
            if not await within(self._wakeup.wait(), left):
                break
        batch: list[_Request] = []
        rest: collections.deque[_Request] = collections.deque()
        while self._queue:
            req = self._queue.popleft()
            if req.future.done():  # cancelled while queued
                continue
            if len(batch) < self.max_batch and req.pixels.shape == shape:
                batch.append(req)
            else:
                rest.append(req)
        self._queue = rest
        return batch

    def _same_shape(self, shape: tuple[int, ...]) -> int:
        return sum(1 for r in self._queue if r.pixels.shape == shape)
