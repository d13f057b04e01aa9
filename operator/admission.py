"""Who gets GPUs next: a pure function of the resources' state, the limits and the nodes.

Order: higher `spec.priority` first, then older first. With `StrictFIFO` (the default) the
global budget is strict: if the head of the queue does not fit, nothing behind it jumps
ahead, so big jobs never starve. With `BestEffortFIFO` a later resource that fits is admitted
while the head waits. A tenant's own limit only holds back that tenant's work. Work that needs
no GPU is never queued. What can never run (more GPUs than a limit allows in total) fails at
once; what no current node fits holds no GPUs and fails once the fail-fast window has passed,
or at once when nodes do not autoscale.
"""

from __future__ import annotations

import datetime as dt
import math
from dataclasses import dataclass, field

from spatialforge.crds.v1alpha1 import conditions as cond
from spatialforge.operator.budget import QueueingStrategy
from spatialforge.operator.derive import Verdict

Key = tuple[str, str, str]  # (kind, namespace, name)


@dataclass(frozen=True)
class Candidate:
    key: Key
    namespace: str
    priority: int
    created: str  # RFC 3339, sorts chronologically
    demand: int  # GPUs held while admitted
    admitted: bool  # already holds its GPUs (Job running, not suspended)
    no_fit: str | None = None  # why no current node can take its pods


@dataclass
class Limits:
    global_budget: int | None = None  # None: unlimited
    namespace_limits: dict[str, int] = field(default_factory=dict)
    strategy: QueueingStrategy = QueueingStrategy.strict_fifo
    nodes_autoscale: bool = True
    no_fit_window_seconds: float = 300.0


@dataclass
class Decision:
    admit: list[Key]
    verdicts: dict[Key, Verdict]  # every candidate not admitted, and why
    in_use: int


def _created(c: Candidate, now: dt.datetime) -> dt.datetime:
    try:
        return dt.datetime.fromisoformat(c.created.replace("Z", "+00:00"))
    except ValueError:
        return now


def decide(candidates: list[Candidate], limits: Limits, *, now: dt.datetime, avg_run_seconds: float) -> Decision:
    in_use = sum(c.demand for c in candidates if c.admitted)
    ns_use: dict[str, int] = {}
    for c in candidates:
        if c.admitted:
            ns_use[c.namespace] = ns_use.get(c.namespace, 0) + c.demand
    waiting = sorted((c for c in candidates if not c.admitted), key=lambda c: (-c.priority, c.created, c.key))
    admit: list[Key] = []
    verdicts: dict[Key, Verdict] = {}
    position = 0
    blocked_globally = False
    demand_ahead = 0
    budget = limits.global_budget
    for c in waiting:
        ns_limit = limits.namespace_limits.get(c.namespace)
        if c.demand and ns_limit is not None and c.demand > ns_limit:
            verdicts[c.key] = Verdict(cond.REASON_EXCEEDS_NAMESPACE_LIMIT, final=True, message=(
                f"needs {c.demand} GPUs but namespace {c.namespace} may use at most {ns_limit} "
                f"(annotation spatialforge.io/gpu-limit)"))
            continue
        if c.demand and budget is not None and c.demand > budget:
            verdicts[c.key] = Verdict(cond.REASON_EXCEEDS_BUDGET, final=True, message=(
                f"needs {c.demand} GPUs but the cluster budget is {budget} (gpuBudget in the quota ConfigMap)"))
            continue
        if c.no_fit is not None:
            fail_at = _created(c, now) + dt.timedelta(seconds=limits.no_fit_window_seconds)
            verdicts[c.key] = Verdict(cond.REASON_NO_FITTING_NODE, c.no_fit, final=not limits.nodes_autoscale,
                                      fail_at=fail_at)
            continue
        if c.demand == 0:  # needs no GPU: never queued behind GPU work
            admit.append(c.key)
            continue
        ns_free = None if ns_limit is None else ns_limit - ns_use.get(c.namespace, 0)
        global_free = None if budget is None else budget - in_use
        if ns_free is not None and c.demand > ns_free:
            reason = f"namespace {c.namespace} uses {ns_use.get(c.namespace, 0)} of its {ns_limit} GPUs; needs {c.demand}"
        elif blocked_globally or (global_free is not None and c.demand > global_free):
            if limits.strategy is QueueingStrategy.strict_fifo:
                blocked_globally = True
            reason = f"cluster uses {in_use} of {budget} GPUs; waiting behind {position} earlier resources"
        else:
            admit.append(c.key)
            in_use += c.demand
            ns_use[c.namespace] = ns_use.get(c.namespace, 0) + c.demand
            continue
        capacity = max(1, min(x for x in (budget, ns_limit, 10**9) if x is not None))
        waves = math.ceil((demand_ahead + c.demand) / capacity)
        position += 1
        verdicts[c.key] = Verdict(cond.REASON_QUOTA_EXCEEDED, reason, position=position,
                                  eta=now + dt.timedelta(seconds=waves * avg_run_seconds))
        demand_ahead += c.demand
    return Decision(admit=admit, verdicts=verdicts, in_use=in_use)
