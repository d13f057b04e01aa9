"""The quota ConfigMap, followed with a watch: the global GPU budget and the queueing strategy.

    data:
      gpuBudget: "8"                  # absent or empty: unlimited
      queueingStrategy: StrictFIFO    # or BestEffortFIFO (as Kueue's ClusterQueue offers)

A deleted ConfigMap means unlimited and StrictFIFO. An unparsable value is logged and treated
as absent. A change applies to the very next admission pass; nothing is admitted before the
first read.
"""

from __future__ import annotations

import asyncio
import enum
import logging
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from spatialforge.operator.kube import Kube

log = logging.getLogger(__name__)


class QueueingStrategy(str, enum.Enum):
    strict_fifo = "StrictFIFO"
    """The head of the queue blocks everything behind it: big jobs never starve."""
    best_effort_fifo = "BestEffortFIFO"
    """A later resource that fits is admitted while the head waits for more GPUs."""


@dataclass(frozen=True)
class Quota:
    gpu_budget: int | None = None  # None: unlimited
    strategy: QueueingStrategy = QueueingStrategy.strict_fifo


def parse(cm: dict[str, Any] | None) -> tuple[Quota, list[str]]:
    """The quota a ConfigMap says, and what in it could not be read."""
    data = (cm or {}).get("data") or {}
    problems: list[str] = []
    raw = data.get("gpuBudget")
    budget: int | None = None
    if raw not in (None, ""):
        try:
            budget = int(raw)
            if budget < 0:
                raise ValueError
        except ValueError:
            problems.append(f"gpuBudget {raw!r} is not a whole number >= 0 (treated as unlimited)")
            budget = None
    strategy = QueueingStrategy.strict_fifo
    raw_strategy = data.get("queueingStrategy")
    if raw_strategy not in (None, ""):
        try:
            strategy = QueueingStrategy(raw_strategy)
        except ValueError:
            problems.append(f"queueingStrategy {raw_strategy!r} is not one of "
                            f"{', '.join(s.value for s in QueueingStrategy)} (treated as StrictFIFO)")
    return Quota(budget, strategy), problems


class BudgetWatch:
    """List, then watch from the list's resourceVersion; a 410 or a broken stream lists again."""

    def __init__(self, kube: Kube, namespace: str, name: str, on_change: Callable[[], None]) -> None:
        self.kube, self.namespace, self.name, self.on_change = kube, namespace, name, on_change
        self.quota = Quota()
        self.known = asyncio.Event()  # no admission before the quota has been read

    def apply(self, cm: dict[str, Any] | None) -> None:
        quota, problems = parse(cm)
        for problem in problems:
            log.error("ConfigMap %s/%s: %s", self.namespace, self.name, problem)
        if quota != self.quota or not self.known.is_set():
            log.info("global GPU budget: %s, queueing: %s",
                     "unlimited" if quota.gpu_budget is None else quota.gpu_budget, quota.strategy.value)
            self.quota = quota
            self.known.set()
            self.on_change()

    async def run(self) -> None:
        while True:
            try:
                cm, rv = await self.kube.list_configmap(self.namespace, self.name)
                self.apply(cm)
                async for event in self.kube.watch_configmap(self.namespace, self.name, rv):
                    kind, obj = event.get("type"), event.get("object") or {}
                    if kind == "ERROR":  # e.g. 410 Gone: list again
                        log.info("watch of ConfigMap %s/%s ended: %s; listing again", self.namespace, self.name,
                                 obj.get("message") or obj.get("reason"))
                        break
                    if kind in ("ADDED", "MODIFIED"):
                        self.apply(obj)
                    elif kind == "DELETED":
                        self.apply(None)
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                log.warning("watching ConfigMap %s/%s failed (%s); retrying", self.namespace, self.name, exc)
                await asyncio.sleep(2)
