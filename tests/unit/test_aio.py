"""`within` never loses a cancellation, even one that lands as the awaited event is set, and
`cancel_and_wait` stops a task that swallowed one."""

from __future__ import annotations

import asyncio

from spatialforge.aio import cancel_and_wait, within


async def _worker(wake: asyncio.Event) -> None:
    """The shape of every wake-up loop in the project: wait for a poke or a poll period."""
    while True:
        await within(wake.wait(), 0.1)
        wake.clear()
        await asyncio.sleep(0)


def test_a_worker_woken_as_it_is_stopped_stops() -> None:
    # On Python 3.11, asyncio.wait_for returned the event's result here and the worker ran on:
    # a CI run hung 15 minutes in the webhook sender's close, waiting for its worker to end.
    async def go() -> bool:
        wake = asyncio.Event()
        task = asyncio.create_task(_worker(wake))
        await asyncio.sleep(0.01)
        wake.set()
        task.cancel()
        done, _ = await asyncio.wait([task], timeout=2.0)
        return bool(done) and task.cancelled()

    assert asyncio.run(go())


def test_it_says_whether_the_wait_finished_in_time() -> None:
    async def go() -> tuple[bool, bool]:
        ev = asyncio.Event()
        missed = await within(ev.wait(), 0.01)
        asyncio.get_running_loop().call_later(0.01, ev.set)
        return missed, await within(ev.wait(), 2.0)

    assert asyncio.run(go()) == (False, True)


async def _stubborn(swallow: int) -> None:
    """Swallows its first `swallow` cancellations, as redis-py 8 does when it lets a command it
    was cancelled in finish and return normally."""
    while True:
        try:
            await asyncio.sleep(0.01)
        except asyncio.CancelledError:
            if swallow == 0:
                raise
            swallow -= 1


def test_cancel_and_wait_stops_a_task_that_swallowed_its_cancellation() -> None:
    async def go() -> tuple[set[asyncio.Task[None]], bool]:
        task = asyncio.create_task(_stubborn(swallow=2))
        await asyncio.sleep(0.02)
        left = await cancel_and_wait([task], timeout=10.0)
        return left, task.cancelled()

    assert asyncio.run(go()) == (set(), True)


def test_cancel_and_wait_returns_what_it_could_not_stop() -> None:
    async def go() -> int:
        task = asyncio.create_task(_stubborn(swallow=3))
        await asyncio.sleep(0.02)
        left = await cancel_and_wait([task], timeout=0.3)  # one cancellation, then out of time
        await cancel_and_wait(left)
        return len(left)

    assert asyncio.run(go()) == 1
