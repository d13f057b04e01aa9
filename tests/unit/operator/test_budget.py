"""The quota ConfigMap watch: a 410 (or any ERROR event) lists again; deletion means unlimited."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from typing import Any

from spatialforge.operator.budget import BudgetWatch, QueueingStrategy


def cm(budget: str, strategy: str | None = None) -> dict[str, Any]:
    data = {"gpuBudget": budget} | ({"queueingStrategy": strategy} if strategy else {})
    return {"metadata": {"name": "q", "resourceVersion": "1"}, "data": data}


class Script:
    """Stands in for Kube's ConfigMap list/watch: each listing returns the next state, and each
    watch plays the next list of events."""

    def __init__(self, listings: list[dict[str, Any] | None], watches: list[list[dict[str, Any]]]) -> None:
        self.listings, self.watches, self.listed = listings, watches, 0

    async def list_configmap(self, namespace: str, name: str) -> tuple[dict[str, Any] | None, str]:
        self.listed += 1
        return self.listings[min(self.listed - 1, len(self.listings) - 1)], str(self.listed)

    async def watch_configmap(self, namespace: str, name: str, rv: str) -> AsyncIterator[dict[str, Any]]:
        events = self.watches.pop(0) if self.watches else []
        for event in events:
            yield event
        if not self.watches:
            await asyncio.Event().wait()  # then the stream stays open


def run_until(watch: BudgetWatch, done: Any) -> None:
    async def scenario() -> None:
        task = asyncio.create_task(watch.run())
        for _ in range(200):
            await asyncio.sleep(0.01)
            if done():
                break
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)

    asyncio.run(scenario())


def test_a_410_lists_again_and_applies_what_changed_meanwhile() -> None:
    kube = Script([cm("2"), cm("5", "BestEffortFIFO")],
                  [[{"type": "ERROR", "object": {"kind": "Status", "code": 410, "message": "too old resource version"}}]])
    changes: list[int] = []
    watch = BudgetWatch(kube, "sys", "q", on_change=lambda: changes.append(1))  # type: ignore[arg-type]
    run_until(watch, lambda: kube.listed >= 2)
    assert kube.listed == 2 and watch.quota.gpu_budget == 5
    assert watch.quota.strategy is QueueingStrategy.best_effort_fifo and len(changes) == 2


def test_deleted_or_unparsable_means_unlimited() -> None:
    kube = Script([cm("2")], [[{"type": "MODIFIED", "object": cm("lots")}, {"type": "MODIFIED", "object": cm("3")},
                               {"type": "DELETED", "object": cm("3")}]])
    seen: list[int | None] = []
    watch = BudgetWatch(kube, "sys", "q", on_change=lambda: seen.append(watch.quota.gpu_budget))  # type: ignore[arg-type]
    run_until(watch, lambda: len(seen) >= 4)
    assert seen == [2, None, 3, None]
