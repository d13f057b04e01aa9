import datetime as dt

from spatialforge.operator.admission import Candidate, Limits, decide

NOW = dt.datetime(2026, 1, 1, tzinfo=dt.UTC)


def cand(name: str, *, ns: str = "a", prio: int = 0, t: int = 0, gpus: int = 1, admitted: bool = False) -> Candidate:
    return Candidate(key=("DepthBatch", ns, name), namespace=ns, priority=prio,
                     created=f"2026-01-01T00:00:{t:02d}Z", demand=gpus, admitted=admitted)


def names(keys: list) -> list[str]:
    return [k[2] for k in keys]


def test_unlimited_admits_everything_in_order() -> None:
    d = decide([cand("b", t=2), cand("a", t=1)], Limits(), now=NOW, avg_run_seconds=60)
    assert names(d.admit) == ["a", "b"] and not d.queued


def test_priority_then_age() -> None:
    d = decide([cand("old", t=1), cand("new-high", t=5, prio=10), cand("mid", t=3)], Limits(global_budget=1),
               now=NOW, avg_run_seconds=60)
    assert names(d.admit) == ["new-high"]
    assert {k[2]: q.position for k, q in d.queued.items()} == {"old": 1, "mid": 2}


def test_global_budget_is_strict_so_big_jobs_do_not_starve() -> None:
    d = decide([cand("run", gpus=3, admitted=True), cand("big", gpus=4, t=1), cand("small", gpus=1, t=2)],
               Limits(global_budget=4), now=NOW, avg_run_seconds=60)
    assert d.admit == [] and set(names(list(d.queued))) == {"big", "small"}


def test_namespace_limit_holds_back_only_that_tenant() -> None:
    d = decide([cand("x1", ns="x", admitted=True), cand("x2", ns="x", t=1), cand("y1", ns="y", t=2)],
               Limits(namespace_limits={"x": 1}), now=NOW, avg_run_seconds=60)
    assert names(d.admit) == ["y1"]
    q = d.queued[("DepthBatch", "x", "x2")]
    assert q.position == 1 and "namespace x" in q.reason and q.eta > NOW


def test_demand_over_any_limit_says_so() -> None:
    d = decide([cand("huge", gpus=9)], Limits(global_budget=8), now=NOW, avg_run_seconds=60)
    assert "budget is 8" in d.queued[("DepthBatch", "a", "huge")].reason
