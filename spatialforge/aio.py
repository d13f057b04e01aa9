"""Small asyncio helpers shared by the operator, the runner, the front end and the dev cluster."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable


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
