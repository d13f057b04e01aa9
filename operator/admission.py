"""Who gets GPUs next: a pure function of the resources' state and the limits.

Order: higher `spec.priority` first, then older first. The global budget is strict (if the
head of the queue does not fit, nothing behind it jumps ahead, so big jobs never starve);
a tenant's own limit only holds back that tenant's work.
"""

from __future__ import annotations

import datetime as dt
import math
from dataclasses import dataclass, field


@dataclass(frozen=True)
class Candidate:
    key: tuple[str, str, str]  # (kind, namespace, name)
    namespace: str
    priority: int
    created: str  # RFC 3339, sorts chronologically
    demand: int  # GPUs held while admitted
    admitted: bool  # already holds its GPUs (Job running, not suspended)


@dataclass
class Limits:
    global_budget: int | None = None  # None: unlimited
    namespace_limits: dict[str, int] = field(default_factory=dict)


@dataclass(frozen=True)
class Queued:
    position: int  # 1-based
    reason: str
    eta: dt.datetime


@dataclass
class Decision:
    admit: list[tuple[str, str, str]]
    queued: dict[tuple[str, str, str], Queued]
    in_use: int


def decide(candidates: list[Candidate], limits: Limits, *, now: dt.datetime, avg_run_seconds: float) -> Decision:
    in_use = sum(c.demand for c in candidates if c.admitted)
    ns_use: dict[str, int] = {}
    for c in candidates:
        if c.admitted:
            ns_use[c.namespace] = ns_use.get(c.namespace, 0) + c.demand
    waiting = sorted((c for c in candidates if not c.admitted), key=lambda c: (-c.priority, c.created, c.key))
    admit: list[tuple[str, str, str]] = []
    queued: dict[tuple[str, str, str], Queued] = {}
    blocked_globally = False
    demand_ahead = 0
    budget = limits.global_budget
    for c in waiting:
        ns_limit = limits.namespace_limits.get(c.namespace)
        ns_free = None if ns_limit is None else ns_limit - ns_use.get(c.namespace, 0)
        global_free = None if budget is None else budget - in_use
        if ns_limit is not None and c.demand > ns_limit:
            reason = f"needs {c.demand} GPUs but namespace {c.namespace} may use at most {ns_limit}"
        elif budget is not None and c.demand > budget:
            reason = f"needs {c.demand} GPUs but the cluster budget is {budget}"
        elif ns_free is not None and c.demand > ns_free:
            reason = f"namespace {c.namespace} uses {ns_use.get(c.namespace, 0)} of its {ns_limit} GPUs; needs {c.demand}"
        elif blocked_globally or (global_free is not None and c.demand > global_free):
            blocked_globally = True
            reason = f"cluster uses {in_use} of {budget} GPUs; waiting behind {len(queued)} earlier resources"
        else:
            admit.append(c.key)
            in_use += c.demand
            ns_use[c.namespace] = ns_use.get(c.namespace, 0) + c.demand
            continue
        capacity = max(1, min(x for x in (budget, ns_limit, 10**9) if x is not None))
        waves = math.ceil((demand_ahead + c.demand) / capacity)
        queued[c.key] = Queued(position=len(queued) + 1, reason=reason,
                               eta=now + dt.timedelta(seconds=waves * avg_run_seconds))
        demand_ahead += c.demand
    return Decision(admit=admit, queued=queued, in_use=in_use)
