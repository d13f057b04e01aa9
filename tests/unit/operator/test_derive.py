"""Status derivation without a Reconciler: resource + Job + pods in, typed status out."""

from __future__ import annotations

import datetime as dt
import json
from typing import Any

from spatialforge.crds import constants as c
from spatialforge.crds.kinds import kind_of
from spatialforge.operator.derive import Observed, Outcome, Verdict, derive
from spatialforge.operator.settings import OperatorSettings
from spatialforge.operator.status import patch_for
from tests.factories import depth_batch

NOW = dt.datetime(2026, 1, 1, 12, 0, 0, tzinfo=dt.UTC)
SETTINGS = OperatorSettings(unschedulable_timeout_seconds=300, image_pull_grace_seconds=60)


def resource(status: dict[str, Any] | None = None, annotations: dict[str, str] | None = None, **spec: Any) -> dict[str, Any]:
    obj = depth_batch("d", **spec)
    obj["metadata"].update(namespace="ns", uid="u1", generation=1, resourceVersion="5",
                           creationTimestamp="2026-01-01T11:59:00Z", annotations=annotations or {})
    if status is not None:
        obj["status"] = status
    return obj


def job(*, complete: bool = False, active: int = 1, ready: int = 1, suspend: bool = False) -> dict[str, Any]:
    conds = [{"type": "Complete", "status": "True"}] if complete else []
    return {"metadata": {"name": "d-db123456", "namespace": "ns", "creationTimestamp": "2026-01-01T11:59:01Z"},
            "spec": {"suspend": suspend},
            "status": {"startTime": "2026-01-01T11:59:02Z", "active": 0 if complete else active,
                       "ready": 0 if complete else ready, "succeeded": 1 if complete else 0,
                       "completionTime": "2026-01-01T11:59:52Z" if complete else None, "conditions": conds}}


def pod(uid: str = "p1", *, running_since: str | None = "2026-01-01T11:59:02Z", finished: str | None = None,
        scheduled: dict[str, Any] | None = None) -> dict[str, Any]:
    if finished:
        state = {"terminated": {"startedAt": running_since, "finishedAt": finished, "exitCode": 0}}
        phase = "Succeeded"
    elif running_since:
        state, phase = {"running": {"startedAt": running_since}}, "Running"
    else:
        state, phase = {}, "Pending"
    status: dict[str, Any] = {"phase": phase, "containerStatuses": [{"state": state}] if state else []}
    if scheduled:
        status["conditions"] = [scheduled]
    return {"metadata": {"name": f"pod-{uid}", "namespace": "ns", "uid": uid, "labels": {c.LABEL_UID: "u1"}},
            "status": status}


def observe(obj: dict[str, Any], j: dict[str, Any] | None = None, pods: list | None = None, **kw: Any) -> Observed:
    spec = kind_of("DepthBatch").spec_model.model_validate(obj["spec"])
    return Observed(obj, spec, None, j, pods or [], **kw)


def test_running_from_job_and_pods_with_gpu_seconds() -> None:
    d = derive(observe(resource(gpus=2), job(), [pod()]), SETTINGS, NOW)
    st = d.status
    assert st.phase.value == "Running" and st.reason == "PodRunning" and st.job_name == "d-db123456"
    assert st.gpu_seconds == 2 * 58.0 and st.attempts == 1 and d.outcome is None
    assert {x.type: x.status for x in st.conditions} == {"Admitted": "True", "Running": "True"}
    assert all(x.observed_generation == 1 for x in st.conditions)


def test_a_forged_terminal_status_is_put_back() -> None:
    forged = {"phase": "Succeeded", "reason": "Completed", "gpuSeconds": 0.5, "completionTime": "2026-01-01T11:59:10Z",
              "conditions": [{"type": "Succeeded", "status": "True", "reason": "Completed", "message": "",
                              "lastTransitionTime": "2026-01-01T11:59:10Z"}],
              "progress": {"done": 1, "total": 4, "shards": {"0": {"done": 1, "total": 4}}}}
    obj = resource(forged)
    d = derive(observe(obj, job(), [pod()]), SETTINGS, NOW)
    patch = patch_for(obj["status"], d.status)
    assert patch["phase"] == "Running" and patch["gpuSeconds"] == 58.0
    assert patch["completionTime"] is None  # a field only a terminal status has is removed
    assert "shards" not in patch.get("progress", {})  # the runner's own entries are never touched
    assert [x["type"] for x in patch["conditions"]] == ["Admitted", "Running"]


def test_succeeded_is_recorded_then_derived_from_the_record_alone() -> None:
    obj = resource()
    d = derive(observe(obj, job(complete=True), [pod(finished="2026-01-01T11:59:50Z")]), SETTINGS, NOW)
    assert d.status.phase.value == "Succeeded" and d.outcome is not None and d.outcome.gpu_seconds == 48.0
    recorded = resource({"phase": "Failed", "gpuSeconds": 1.0}, {c.ANNOTATION_OUTCOME: d.outcome.dumps()})
    again = derive(observe(recorded), SETTINGS, NOW + dt.timedelta(hours=1))  # Job and pods gone
    assert again.outcome is None and again.status.phase.value == "Succeeded" and again.status.gpu_seconds == 48.0
    assert again.status.completion_time == dt.datetime(2026, 1, 1, 11, 59, 52, tzinfo=dt.UTC)


def test_gpu_seconds_of_gone_pods_come_from_the_ledger_never_a_maximum() -> None:
    obj = resource({"gpuSeconds": 9999.0}, {c.ANNOTATION_GPU_LEDGER: json.dumps({"gone": 10.0})})
    d = derive(observe(obj, job(), [pod("p2")]), SETTINGS, NOW)
    assert d.status.gpu_seconds == 10.0 + 58.0


def test_unschedulable_pod_shows_the_scheduler_message_then_fails_and_stops_the_job() -> None:
    cond = {"type": "PodScheduled", "status": "False", "reason": "Unschedulable",
            "message": "0/2 nodes are available: 2 Insufficient nvidia.com/gpu.", "lastTransitionTime": "2026-01-01T11:59:30Z"}
    pending = pod(running_since=None, scheduled=cond)
    d = derive(observe(resource(), job(active=1, ready=0), [pending]), SETTINGS, NOW)
    assert d.status.phase.value == "Pending" and d.status.reason == "Unschedulable"
    assert "Insufficient nvidia.com/gpu" in d.status.message
    assert d.recheck_at == dt.datetime(2026, 1, 1, 12, 4, 30, tzinfo=dt.UTC)
    late = derive(observe(resource(), job(active=1, ready=0), [pending]), SETTINGS, NOW + dt.timedelta(minutes=5))
    assert late.status.phase.value == "Failed" and late.stop_job and late.outcome.reason == "Unschedulable"


def test_verdicts_without_a_job() -> None:
    q = Verdict("QuotaExceeded", "cluster uses 2 of 2 GPUs", position=1, eta=NOW)
    st = derive(observe(resource(), verdict=q), SETTINGS, NOW).status
    assert (st.phase.value, st.reason, st.queue_position) == ("Queued", "QuotaExceeded", 1)
    never = Verdict("ExceedsClusterBudget", "needs 9 GPUs but the cluster budget is 8", final=True)
    d = derive(observe(resource(), verdict=never), SETTINGS, NOW)
    assert d.status.phase.value == "Failed" and d.status.reason == "ExceedsClusterBudget" and d.outcome
    nofit = Verdict("NoFittingNode", "no node fits a runner pod", fail_at=NOW + dt.timedelta(seconds=60))
    d = derive(observe(resource(), verdict=nofit), SETTINGS, NOW)
    assert (d.status.phase.value, d.status.reason, d.recheck_at) == ("Pending", "NoFittingNode", nofit.fail_at)
    assert derive(observe(resource(), verdict=nofit), SETTINGS, nofit.fail_at).status.phase.value == "Failed"
    st = derive(observe(resource()), SETTINGS, NOW).status
    assert (st.phase.value, st.reason) == ("Pending", "AwaitingAdmission")


def test_job_deleted_and_invalid_spec_and_pod_creation_failures() -> None:
    d = derive(observe(resource({"phase": "Running", "jobName": "d-db123456"})), SETTINGS, NOW)
    assert d.status.reason == "JobDeleted" and d.outcome.phase == "Failed"
    legacy = resource({"phase": "Failed", "reason": "Unschedulable", "message": "m", "jobName": "d-db123456"})
    assert derive(observe(legacy), SETTINGS, NOW).outcome.reason == "Unschedulable"  # recorded before outcomes
    bad = Observed(resource(), None, "spec.inputs: too short", None, [])
    assert derive(bad, SETTINGS, NOW).status.reason == "InvalidSpec"
    d = derive(observe(resource(), job(active=0, ready=0), creation_failures=['pods "x" is forbidden: exceeded quota']),
               SETTINGS, NOW)
    assert d.status.reason == "PodCreationFailed" and "exceeded quota" in d.status.message and d.stop_job


def test_progress_and_skipped_images_are_summed_from_the_shards() -> None:
    shards = {"0": {"done": 3, "total": 4, "stage": "depth", "skipped": 1}, "1": {"done": 4, "total": 4, "skipped": 2}}
    st = derive(observe(resource({"progress": {"shards": shards}}), job(), [pod()]), SETTINGS, NOW).status
    assert (st.progress.done, st.progress.total, st.progress_summary, st.skipped_images) == (7, 8, "7/8", 3)


def test_floor_plan_figures_are_copied_from_the_shards_into_the_status() -> None:
    st = derive(observe(resource({"progress": {"shards": {"0": {"done": 1, "total": 4}}}}), job(), [pod()]),
                SETTINGS, NOW).status
    assert (st.floor_area_m2, st.room_count) == (None, None)  # no floor plan (yet): no figures
    shards = {"0": {"done": 4, "total": 4, "stage": "done", "floorAreaM2": 41.25, "roomCount": 3},
              "1": {"done": 4, "total": 4, "floorAreaM2": 10.5, "roomCount": 1}, "2": {"done": 2, "total": 2}}
    obj = resource({"progress": {"shards": shards}})
    st = derive(observe(obj, job(complete=True), [pod(finished="2026-01-01T11:59:50Z")]), SETTINGS, NOW).status
    assert st.phase.value == "Succeeded" and (st.floor_area_m2, st.room_count) == (51.75, 4)
    assert patch_for(obj["status"], st)["floorAreaM2"] == 51.75


def test_outcome_annotation_round_trips_and_garbage_is_ignored() -> None:
    out = Outcome(phase="Failed", reason="InvalidInput", message="m", completion_time="2026-01-01T00:00:00Z")
    assert Outcome.of(resource(annotations={c.ANNOTATION_OUTCOME: out.dumps()})) == out
    assert Outcome.of(resource(annotations={c.ANNOTATION_OUTCOME: "{not json"})) is None
    assert Outcome.of(resource(annotations={c.ANNOTATION_OUTCOME: '{"phase": "Running", "reason": "x", '
                                                                   '"message": "", "completionTime": ""}'})) is None


def test_a_second_reconcile_of_an_unchanged_world_writes_nothing() -> None:
    from spatialforge.operator.status import dump

    for j, pods in ((job(), [pod()]), (job(complete=True), [pod(finished="2026-01-01T11:59:50Z")]), (None, [])):
        first = derive(observe(resource(), j, pods), SETTINGS, NOW).status
        obj = resource(dump(first))
        again = derive(observe(obj, j, pods), SETTINGS, NOW + dt.timedelta(seconds=5) if j is None else NOW).status
        assert patch_for(obj["status"], again) == {}


def test_derive_alone_decides_whether_the_job_is_deleted() -> None:
    """One rule: Failed while the Job has not finished by itself. A recorded outcome keeps asking
    (a crash between recording it and the delete is redone); a Job that ended is left alone."""
    failed = Outcome(phase="Failed", reason="Unschedulable", message="m", completion_time="2026-01-01T11:59:59Z",
                     job_name="d-db123456")
    recorded = resource(annotations={c.ANNOTATION_OUTCOME: failed.dumps()})
    assert derive(observe(recorded, job(active=1, ready=0)), SETTINGS, NOW).stop_job
    assert not derive(observe(recorded), SETTINGS, NOW).stop_job  # no Job left
    ended = job(active=0, ready=0)
    ended["status"]["conditions"] = [{"type": "Failed", "status": "True", "reason": "BackoffLimitExceeded"}]
    d = derive(observe(resource(), ended), SETTINGS, NOW)
    assert d.status.reason == "BackoffLimitExceeded" and not d.stop_job
    done = derive(observe(resource(), job(complete=True), [pod(finished="2026-01-01T11:59:50Z")]), SETTINGS, NOW)
    assert done.status.phase.value == "Succeeded" and not done.stop_job
    never = Verdict("ExceedsClusterBudget", "needs 9 GPUs but the cluster budget is 8", final=True)
    resumed = derive(observe(resource(), job(suspend=True, active=0, ready=0), verdict=never), SETTINGS, NOW)
    assert resumed.status.phase.value == "Failed" and resumed.stop_job  # its suspended Job goes too
    invalid = Observed(resource(), None, "spec.inputs: too short", job(), [pod()])
    assert derive(invalid, SETTINGS, NOW).stop_job
    assert not derive(observe(resource(gpus=2), job(), [pod()]), SETTINGS, NOW).stop_job  # running
