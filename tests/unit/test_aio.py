"""`within` never loses a cancellation, even one that lands as the awaited event is set."""

from __future__ import annotations

import asyncio

from spatialforge.aio import within


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
