from spatialforge.operator.status import diff, set_condition


def test_condition_transition_time_moves_only_on_status_change() -> None:
    c1 = set_condition([], "Admitted", "False", "QuotaExceeded", "wait", 1)
    c2 = set_condition(c1, "Admitted", "False", "QuotaExceeded", "still waiting", 2)
    assert c2[0]["lastTransitionTime"] == c1[0]["lastTransitionTime"] and c2[0]["observedGeneration"] == 2
    c3 = set_condition([{**c1[0], "lastTransitionTime": "2000-01-01T00:00:00Z"}], "Admitted", "True", "JobCreated", "", 2)
    assert c3[0]["lastTransitionTime"] != "2000-01-01T00:00:00Z"


def test_diff_writes_only_changes() -> None:
    current = {"phase": "Running", "progress": {"done": 1, "total": 4, "shards": {"0": {"done": 1}}}}
    assert diff(current, {"phase": "Running", "progress": {"done": 1, "total": 4}}) == {}
    assert diff(current, {"progress": {"done": 2, "total": 4}}) == {"progress": {"done": 2}}
    assert diff(current, {"queuePosition": None}) == {}
    assert diff({"queuePosition": 3}, {"queuePosition": None}) == {"queuePosition": None}
