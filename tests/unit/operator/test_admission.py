import datetime as dt

from spatialforge.operator.admission import Candidate, Limits, decide
from spatialforge.operator.budget import QueueingStrategy, parse

NOW = dt.datetime(2026, 1, 1, tzinfo=dt.UTC)


def cand(name: str, *, ns: str = "a", prio: int = 0, t: int = 0, gpus: int = 1, admitted: bool = False,
         no_fit: str | None = None) -> Candidate:
    return Candidate(key=("DepthBatch", ns, name), namespace=ns, priority=prio,
                     created=f"2026-01-01T00:00:{t:02d}Z", demand=gpus, admitted=admitted, no_fit=no_fit)


def names(keys: list) -> list[str]:
    return [k[2] for k in keys]


def queued(d) -> dict[str, int]:
    return {k[2]: v.position for k, v in d.verdicts.items() if v.position is not None}


def test_unlimited_admits_everything_in_order() -> None:
    d = decide([cand("b", t=2), cand("a", t=1)], Limits(), now=NOW, avg_run_seconds=60)
    assert names(d.admit) == ["a", "b"] and not d.verdicts


def test_priority_then_age() -> None:
    d = decide([cand("old", t=1), cand("new-high", t=5, prio=10), cand("mid", t=3)], Limits(global_budget=1),
               now=NOW, avg_run_seconds=60)
    assert names(d.admit) == ["new-high"]
    assert queued(d) == {"old": 1, "mid": 2}


def test_strict_fifo_head_blocks_so_big_jobs_do_not_starve() -> None:
    d = decide([cand("run", gpus=3, admitted=True), cand("big", gpus=4, t=1), cand("small", gpus=1, t=2)],
               Limits(global_budget=4), now=NOW, avg_run_seconds=60)
    assert d.admit == [] and queued(d) == {"big": 1, "small": 2}


def test_best_effort_fifo_admits_a_later_resource_that_fits() -> None:
    d = decide([cand("run", gpus=3, admitted=True), cand("big", gpus=4, t=1), cand("small", gpus=1, t=2)],
               Limits(global_budget=4, strategy=QueueingStrategy.best_effort_fifo), now=NOW, avg_run_seconds=60)
    assert names(d.admit) == ["small"] and queued(d) == {"big": 1}


def test_namespace_limit_holds_back_only_that_tenant() -> None:
    d = decide([cand("x1", ns="x", admitted=True), cand("x2", ns="x", t=1), cand("y1", ns="y", t=2)],
               Limits(namespace_limits={"x": 1}), now=NOW, avg_run_seconds=60)
    assert names(d.admit) == ["y1"]
    q = d.verdicts[("DepthBatch", "x", "x2")]
    assert q.position == 1 and "namespace x" in q.message and q.eta > NOW and not q.final


def test_more_than_any_limit_allows_fails_at_once_naming_the_limit() -> None:
    d = decide([cand("huge", gpus=9), cand("wide", ns="b", gpus=3)],
               Limits(global_budget=8, namespace_limits={"b": 2}), now=NOW, avg_run_seconds=60)
    huge, wide = d.verdicts[("DepthBatch", "a", "huge")], d.verdicts[("DepthBatch", "b", "wide")]
    assert huge.final and huge.reason == "ExceedsClusterBudget" and "budget is 8" in huge.message
    assert wide.final and wide.reason == "ExceedsNamespaceLimit" and "at most 2" in wide.message


def test_work_without_gpus_is_never_queued() -> None:
    d = decide([cand("run", gpus=1, admitted=True), cand("head", gpus=2, t=1), cand("cpu", gpus=0, t=2)],
               Limits(global_budget=1, namespace_limits={"a": 1}), now=NOW, avg_run_seconds=60)
    assert names(d.admit) == ["cpu"]


def test_no_fitting_node_holds_no_gpus_and_waits_or_fails() -> None:
    c = [cand("nofit", gpus=8, no_fit="no node fits"), cand("next", t=1)]
    d = decide(c, Limits(global_budget=8), now=NOW, avg_run_seconds=60)
    v = d.verdicts[("DepthBatch", "a", "nofit")]
    assert names(d.admit) == ["next"] and v.reason == "NoFittingNode" and not v.final
    assert v.fail_at == dt.datetime(2026, 1, 1, 0, 5, tzinfo=dt.UTC)
    d = decide(c, Limits(global_budget=8, nodes_autoscale=False), now=NOW, avg_run_seconds=60)
    assert d.verdicts[("DepthBatch", "a", "nofit")].final


def test_quota_configmap_parsing() -> None:
    assert parse(None)[0].gpu_budget is None
    q, problems = parse({"data": {"gpuBudget": "4", "queueingStrategy": "BestEffortFIFO"}})
    assert (q.gpu_budget, q.strategy, problems) == (4, QueueingStrategy.best_effort_fifo, [])
    q, problems = parse({"data": {"gpuBudget": "four", "queueingStrategy": "Random"}})
    assert q.gpu_budget is None and q.strategy is QueueingStrategy.strict_fifo and len(problems) == 2
