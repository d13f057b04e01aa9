"""Start-up and shut-down of the depth server: load the model in the background, run one
warm-up batch of the largest size, then start the batcher; on shut-down stop it all."""

from __future__ import annotations

import asyncio
import concurrent.futures as cf
import contextlib
import logging
import time
from collections.abc import AsyncIterator, Callable
from typing import Any

import numpy as np
from starlette.applications import Starlette

from spatialforge.runner.errors import RunnerError
from spatialforge.runner.serve.batcher import BatchStats, DynamicBatcher
from spatialforge.runner.serve.state import ServerState

log = logging.getLogger("spatialforge.runner.serve.app")
WARMUP_SIZE = (480, 640)  # (h, w) of the warm-up images: a common 4:3 photo after resizing

Loader = Callable[[ServerState], Any]
OnFatal = Callable[[str], None]


async def load_and_warm(state: ServerState, loader: Loader | None, on_fatal: OnFatal | None) -> None:
    """Load, warm up and mark ready; a failure is kept for /readyz and passed to `on_fatal`."""
    serve = state.serve
    try:
        est = await asyncio.to_thread(loader or ServerState.load_model, state)
        batcher = DynamicBatcher(
            est.predict, max_batch=serve.max_batch, max_wait=serve.max_wait_ms / 1000.0, max_queue=serve.max_queue,
            on_batch=lambda s: _on_batch(state, s),
        )
        warm = est.preprocess(np.zeros((*WARMUP_SIZE, 3), np.uint8))
        t0 = time.monotonic()
        await batcher.run_now([warm] * serve.max_batch, [WARMUP_SIZE] * serve.max_batch)  # largest batch fits
        log.info("warm-up batch of %d ran in %.2f s", serve.max_batch, time.monotonic() - t0)
        batcher.start()
        state.estimator, state.batcher, state.ready = est, batcher, True
        state.metrics.ready.set(1)
        log.info("depth server ready: %s on %s (backend %s), max batch %d, max wait %.0f ms, max queue %d",
                 est.checkpoint.name, est.device.torch_device, est.backend.name, serve.max_batch, serve.max_wait_ms,
                 serve.max_queue)
    except Exception as exc:  # noqa: BLE001 - reported through readiness and on_fatal, never raised into the loop
        state.failure = exc.reason if isinstance(exc, RunnerError) else f"{type(exc).__name__}: {exc}"
        log.error("depth server cannot start: %s", state.failure)
        if on_fatal is not None:
            on_fatal(state.failure)


def _on_batch(state: ServerState, stats: BatchStats) -> None:
    state.metrics.batch(stats.size, stats.seconds, stats.waited)


def lifespan(state: ServerState, loader: Loader | None, on_fatal: OnFatal | None
             ) -> Callable[[Starlette], contextlib.AbstractAsyncContextManager[None]]:
    """The app's lifespan: decode threads and the background load; on exit (uvicorn runs it
    after in-flight requests finished or drain_seconds passed) everything stops."""

    @contextlib.asynccontextmanager
    async def run(app: Starlette) -> AsyncIterator[None]:
        pool = state.pool = cf.ThreadPoolExecutor(state.serve.decode_workers, thread_name_prefix="sf-decode")
        task = state.loader = asyncio.get_running_loop().create_task(load_and_warm(state, loader, on_fatal),
                                                                     name="sf-load")
        try:
            yield
        finally:
            state.ready = False
            state.metrics.ready.set(0)
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await task
            if state.batcher is not None:
                await state.batcher.stop()
            pool.shutdown(wait=False, cancel_futures=True)

    return run
