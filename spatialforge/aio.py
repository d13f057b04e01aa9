"""Small asyncio helpers shared by the operator, the runner, the front end and the dev cluster."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Iterable
from typing import Any


async def within(awaitable: Awaitable[object], timeout: float) -> bool:
    """Await `awaitable` for at most `timeout` seconds; True when it finished in time.

    Used instead of `asyncio.wait_for` on purpose: on Python 3.11, `wait_for` swallows a
    cancellation that lands in the same loop turn as the awaited future completing (it returns
    the result and the task runs on). A worker that waits on its wake-up event and is woken
    just as it is stopped would then never stop, and whoever awaits its end waits forever.
    `asyncio.timeout` counts cancellations and never loses one.
    """
    try:
        async with asyncio.timeout(timeout):
            await awaitable
    except TimeoutError:
        return False
    return True


CANCEL_RETRY = 0.5  # seconds between cancellations of a task that is still running


async def cancel_and_wait(tasks: Iterable[asyncio.Task[Any]], timeout: float | None = None) -> set[asyncio.Task[Any]]:
    """Cancel `tasks` and wait until they have ended; returns those still running after `timeout`.

    Cancels again every CANCEL_RETRY seconds. A library may swallow a cancellation: redis-py 8
    lets a command it was cancelled in finish and return normally, so a worker loop cancelled
    during a Redis call runs on as if nothing happened, and a single `cancel()` followed by
    `gather()` waits for it forever (a CI run hung 15 minutes on the webhook worker this way).
    """
    loop = asyncio.get_running_loop()
    deadline = None if timeout is None else loop.time() + timeout
    tasks = list(tasks)
    pending = {t for t in tasks if not t.done()}
    done = {t for t in tasks if t.done()}
    while pending:
        for t in pending:
            t.cancel()
        wait = CANCEL_RETRY if deadline is None else min(CANCEL_RETRY, deadline - loop.time())
        if wait <= 0:
            break
        finished, pending = await asyncio.wait(pending, timeout=wait)
        done |= finished
    for t in done:  # retrieved, so asyncio never logs "exception was never retrieved"
        if not t.cancelled():
            t.exception()
    return pending
