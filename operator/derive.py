"""Pure status derivation: a resource's whole status from its Job, its pods and admission.

No I/O, no clock of its own (`now` comes in). Shaped like Kueue's localqueue_controller: the
reasons are the constants of `crds/v1alpha1/conditions.py`, the status is computed in full on
every reconcile as the typed `ResourceStatus`, each condition carries `observedGeneration`, and
the caller writes only what differs (`status.patch_for`). Nothing here trusts the stored status
for phase, conditions, timings or GPU-seconds: a status written by anyone but the operator is
put back on the next reconcile. Once terminal, what the derivation needs after the Job or pods
are gone is kept in an annotation only the operator writes (`Outcome`).
"""

from __future__ import annotations

import datetime as dt
import json
from dataclasses import dataclass, field
from typing import Any

from spatialforge.crds import constants as c
from spatialforge.crds import layout
from spatialforge.crds.pool import HandOffRecord
from spatialforge.crds.v1alpha1 import ResourceStatus
from spatialforge.crds.v1alpha1 import conditions as cond
from spatialforge.crds.v1alpha1.common import Phase
from spatialforge.operator.jobs import (
    failure_reason,
    gpu_seconds,
    job_condition,
    job_finished,
    pod_trouble,
    pods_missing_since,
)
from spatialforge.operator.settings import OperatorSettings
from spatialforge.operator.status import set_condition

TERMINAL = frozenset(p.value for p in Phase if p.terminal)
# The runner reports images it skipped per shard once ShardProgress has `skipped`; the sum is
# status.skippedImages once ResourceStatus has that field.
_HAS_SKIPPED = "skipped_images" in ResourceStatus.model_fields


def iso(ts: dt.datetime) -> str:
    return ts.astimezone(dt.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


@dataclass(frozen=True)
class Verdict:
    """What admission says about a resource that holds no GPUs (no running Job)."""

    reason: str  # QuotaExceeded, ExceedsClusterBudget, ExceedsNamespaceLimit or NoFittingNode
    message: str
    position: int | None = None  # 1-based queue position, while waiting for quota
    eta: dt.datetime | None = None
    final: bool = False  # can never run under the current limits or nodes: fail now
    fail_at: dt.datetime | None = None  # fails then unless it becomes admissible (no node fits)


@dataclass(frozen=True)
class Outcome:
    """The terminal result, kept in annotation `spatialforge.io/outcome` once reached."""

    phase: str
    reason: str
    message: str
    completion_time: str
    start_time: str | None = None
    gpu_seconds: float = 0.0
    attempts: int | None = None
    job_name: str | None = None
    manifest_uri: str | None = None

    def dumps(self) -> str:
        return json.dumps({k: v for k, v in self.__dict__.items() if v is not None}, separators=(",", ":"))

    @classmethod
    def of(cls, obj: dict[str, Any]) -> Outcome | None:
        raw = (obj["metadata"].get("annotations") or {}).get(c.ANNOTATION_OUTCOME)
        if not raw:
            return None
        try:
            data = json.loads(raw)
            out = cls(**data)
        except (TypeError, ValueError):
            return None  # unreadable: derived afresh from the Job, as if never recorded
        return out if out.phase in TERMINAL else None


def gpu_ledger(obj: dict[str, Any]) -> dict[str, float]:
    """GPU-seconds of runner pods that are gone (pod uid -> seconds), kept by the operator."""
    raw = (obj["metadata"].get("annotations") or {}).get(c.ANNOTATION_GPU_LEDGER)
    try:
        data = json.loads(raw) if raw else {}
        return {str(k): float(v) for k, v in data.items()} if isinstance(data, dict) else {}
    except (TypeError, ValueError):
        return {}


@dataclass
class Observed:
    """Everything the derivation reads."""

    obj: dict[str, Any]  # the resource as cached
    spec: Any | None  # the validated spec model (DepthBatchSpec / ReconstructionJobSpec); None if invalid
    invalid: str | None  # why the spec does not validate
    job: dict[str, Any] | None
    pods: list[dict[str, Any]]
    verdict: Verdict | None = None
    creation_failures: list[str] = field(default_factory=list)  # FailedCreate events of the Job


@dataclass
class Derived:
    status: ResourceStatus
    recheck_at: dt.datetime | None = None  # time-based rules need another look then
    outcome: Outcome | None = None  # set when terminal: persist it before the status
    stop_job: bool = False  # Failed while its Job still runs: delete the Job (after the outcome is kept)


def progress_of(status: dict[str, Any]) -> tuple[dict[str, Any] | None, str | None, int | None]:
    """(progress without shards, "done/total", skipped images) summed over the runner's shards."""
    shards = ((status.get("progress") or {}).get("shards")) or {}
    if not shards:
        return None, None, None
    done = sum(int(s.get("done") or 0) for s in shards.values())
    total = sum(int(s.get("total") or 0) for s in shards.values())
    skipped = sum(int(s.get("skipped") or 0) for s in shards.values())
    stages = sorted({s.get("stage") or "" for s in shards.values()} - {""})
    return ({"done": done, "total": total, "stage": ",".join(stages)[:64]}, f"{done}/{total}",
            skipped if any("skipped" in s for s in shards.values()) else None)


def floorplan_of(status: dict[str, Any]) -> dict[str, Any]:
    """floorAreaM2 and roomCount summed over the shards that reported a floor plan ({} when none did)."""
    shards = ((status.get("progress") or {}).get("shards")) or {}
    areas = [float(s["floorAreaM2"]) for s in shards.values() if s.get("floorAreaM2") is not None]
    rooms = [int(s["roomCount"]) for s in shards.values() if s.get("roomCount") is not None]
    out: dict[str, Any] = {}
    if areas:
        out["floorAreaM2"] = round(sum(areas), 3)
    if rooms:
        out["roomCount"] = sum(rooms)
    return out


def manifest_uri(obj: dict[str, Any], spec: Any) -> str:
    meta = obj["metadata"]
    if spec.shards == 1:
        return layout.manifest_uri(spec.output.uri, meta["namespace"], meta["name"], 0)
    return layout.output_base(spec.output.uri, meta["namespace"], meta["name"]) + "/"


class _Builder:
    """Conditions computed from scratch, keeping a condition's lastTransitionTime while its
    status stays the same (as apimachinery's meta.SetStatusCondition does)."""

    def __init__(self, stored: list[dict[str, Any]], generation: int | None, now: dt.datetime) -> None:
        self.stored, self.gen, self.now = stored, generation, now
        self.out: list[dict[str, Any]] = []

    def set(self, type_: str, status: bool, reason: str, message: str) -> None:
        old = [x for x in self.stored if x.get("type") == type_]
        self.out = set_condition(self.out + old, type_, "True" if status else "False", reason, message, self.gen,
                                 now=iso(self.now))


def derive(o: Observed, settings: OperatorSettings, now: dt.datetime) -> Derived:
    obj = o.obj
    meta, stored = obj["metadata"], obj.get("status") or {}
    gen = meta.get("generation")
    b = _Builder(list(stored.get("conditions") or []), gen, now)
    progress, summary, skipped = progress_of(stored)
    common: dict[str, Any] = {"observedGeneration": gen, "progress": progress, "progressSummary": summary}
    if _HAS_SKIPPED:
        common["skippedImages"] = skipped
    common.update(floorplan_of(stored))
    spec_suspend = bool((obj.get("spec") or {}).get("suspend"))
    if spec_suspend:
        b.set(cond.SUSPENDED, True, cond.REASON_SUSPENDED, "spec.suspend is true")
    elif any(x.get("type") == cond.SUSPENDED for x in stored.get("conditions") or []):
        b.set(cond.SUSPENDED, False, cond.REASON_ADMITTED, "resumed")
    hand_off = HandOffRecord.of(obj)
    if hand_off is not None and hand_off.failed:  # a pool failed it: a Job runs it (operator/handoff.py)
        b.set(cond.POOL_HAND_OFF, False, cond.REASON_HAND_OFF_FAILED, hand_off.failed)

    def done(out: Outcome, *, new: bool) -> Derived:
        failed = out.phase == Phase.failed.value
        b.set(cond.ADMITTED, bool(out.job_name), cond.REASON_JOB_CREATED if out.job_name else out.reason,
              f"Job {out.job_name} created" if out.job_name else out.message)
        b.set(cond.RUNNING, False, out.reason, out.message if failed else "finished")
        b.set(cond.FAILED if failed else cond.SUCCEEDED, True, out.reason,
              out.message if failed else "all outputs written")
        st = _status({**common, "phase": out.phase, "reason": out.reason, "message": out.message,
                      "startTime": out.start_time, "completionTime": out.completion_time,
                      "gpuSeconds": out.gpu_seconds, "attempts": out.attempts, "jobName": out.job_name,
                      "manifestUri": out.manifest_uri, "conditions": b.out})
        # The one rule for deleting the Job: Failed (fail fast, invalid spec, a final verdict)
        # while it has not finished by itself. A recorded outcome keeps asking until it is gone,
        # so a crash between recording the outcome and the delete is put right.
        return Derived(st, outcome=out if new else None,
                       stop_job=failed and o.job is not None and not job_finished(o.job))

    recorded = Outcome.of(obj)
    if recorded is not None:
        return done(recorded, new=False)

    job, pods = o.job, o.pods
    gpus = o.spec.placement.gpus if o.spec is not None else int(((obj.get("spec") or {}).get("placement") or {}).get("gpus", 1))
    secs = gpu_seconds(gpus, pods, gpu_ledger(obj), now)
    jstatus = (job or {}).get("status") or {}
    attempts = (int(jstatus.get("failed") or 0) + int(jstatus.get("succeeded") or 0)
                + int(jstatus.get("active") or 0)) if job is not None else None
    job_name = job["metadata"]["name"] if job is not None else None
    start = jstatus.get("startTime")

    def fail(reason: str, message: str, *, name: str | None = job_name, completed: str | None = None) -> Derived:
        out = Outcome(phase=Phase.failed.value, reason=reason, message=message, completion_time=completed or iso(now),
                      start_time=start, gpu_seconds=secs, attempts=attempts, job_name=name)
        return done(out, new=True)

    if o.spec is None:
        return fail(cond.REASON_INVALID_SPEC, o.invalid or "the spec does not validate")

    if job is None:
        if stored.get("jobName"):
            if stored.get("phase") == Phase.failed.value and stored.get("reason"):
                # Failed (fail fast deletes the Job) before outcomes were recorded: Failed either
                # way, so the stored reason is kept rather than renamed JobDeleted.
                return fail(stored["reason"], stored.get("message") or stored["reason"], name=stored["jobName"],
                            completed=stored.get("completionTime"))
            return fail(cond.REASON_JOB_LOST, f"Job {stored['jobName']} was deleted while the resource was in progress",
                        name=stored["jobName"])
        return _waiting(o, b, common, now, secs)

    if job_condition(job, "Complete"):
        out = Outcome(phase=Phase.succeeded.value, reason=cond.REASON_COMPLETED, message="succeeded",
                      completion_time=jstatus.get("completionTime") or iso(now), start_time=start, gpu_seconds=secs,
                      attempts=attempts, job_name=job_name, manifest_uri=manifest_uri(obj, o.spec))
        return done(out, new=True)
    failed = job_condition(job, "Failed")
    if failed:
        return fail(*failure_reason(failed, pods), completed=failed.get("lastTransitionTime"))
    trouble = pod_trouble(pods, settings, now)
    if trouble is not None and trouble.fail:
        return fail(trouble.reason, trouble.message)
    if o.creation_failures:
        return fail(cond.REASON_POD_CREATION, f"the Job's pods could not be created: {o.creation_failures[-1]}")

    common.update(jobName=job_name, attempts=attempts, startTime=start, gpuSeconds=secs)
    if (job.get("spec") or {}).get("suspend"):
        b.set(cond.RUNNING, False, cond.REASON_SUSPENDED, "the Job is suspended")
        if o.spec.queue_name:
            msg = f"waiting for Kueue to admit the Job in queue {o.spec.queue_name}"
            b.set(cond.ADMITTED, False, cond.REASON_WAITING_FOR_KUEUE, msg)
            return Derived(_status({**common, "phase": Phase.queued.value, "reason": cond.REASON_WAITING_FOR_KUEUE,
                                    "message": msg, "conditions": b.out}))
        if spec_suspend:
            b.set(cond.ADMITTED, False, cond.REASON_SUSPENDED, "suspended")
            return Derived(_status({**common, "phase": Phase.pending.value, "reason": cond.REASON_SUSPENDED,
                                    "message": "suspended", "conditions": b.out}))
        return _waiting(o, b, common, now, secs, keep_running_condition=True)

    b.set(cond.ADMITTED, True, cond.REASON_JOB_CREATED, f"Job {job_name} created")
    running = [p for p in pods if (p.get("status") or {}).get("phase") == "Running"]
    recheck = trouble.until if trouble is not None else None
    missing_since = pods_missing_since(job, pods, settings)
    if missing_since is not None:  # the loop asks for FailedCreate events from then on
        recheck = missing_since if missing_since > now else now + dt.timedelta(seconds=10)
    if running or int(jstatus.get("active") or 0) and int(jstatus.get("ready") or 0):
        n = len(running) or jstatus.get("ready")
        b.set(cond.RUNNING, True, cond.REASON_POD_RUNNING, f"{n} runner pod(s) running")
        phase, reason, message = Phase.running.value, cond.REASON_POD_RUNNING, "running"
        if trouble is not None:  # another shard cannot start yet
            message = f"running; {trouble.message}"
    elif trouble is not None:
        b.set(cond.RUNNING, False, trouble.reason, trouble.message)
        phase, reason, message = Phase.pending.value, trouble.reason, trouble.message
    else:
        b.set(cond.RUNNING, False, cond.REASON_POD_PENDING, "waiting for a runner pod to start")
        phase, reason, message = Phase.pending.value, cond.REASON_POD_PENDING, "admitted; waiting for a runner pod"
    return Derived(_status({**common, "phase": phase, "reason": reason, "message": message, "conditions": b.out}),
                   recheck_at=recheck)


def _waiting(o: Observed, b: _Builder, common: dict[str, Any], now: dt.datetime, secs: float,
             keep_running_condition: bool = False) -> Derived:
    """No GPUs held: suspended, queued for quota, no node fits, or not yet seen by admission."""
    if not keep_running_condition:
        common = {**common, "gpuSeconds": secs or None}
    if o.spec.suspend:
        b.set(cond.ADMITTED, False, cond.REASON_SUSPENDED, "suspended before admission")
        b.set(cond.RUNNING, False, cond.REASON_SUSPENDED, "suspended")
        return Derived(_status({**common, "phase": Phase.pending.value, "reason": cond.REASON_SUSPENDED,
                                "message": "suspended", "conditions": b.out}))
    v = o.verdict
    if v is not None and (v.final or (v.fail_at is not None and now >= v.fail_at)):
        out = Outcome(phase=Phase.failed.value, reason=v.reason, message=v.message, completion_time=iso(now),
                      gpu_seconds=secs)
        b.set(cond.ADMITTED, False, v.reason, v.message)
        b.set(cond.RUNNING, False, v.reason, v.message)
        b.set(cond.FAILED, True, v.reason, v.message)
        st = _status({**common, "phase": out.phase, "reason": out.reason, "message": out.message,
                      "completionTime": out.completion_time, "gpuSeconds": secs, "conditions": b.out})
        return Derived(st, outcome=out, stop_job=o.job is not None and not job_finished(o.job))
    if v is not None:
        b.set(cond.ADMITTED, False, v.reason, v.message)
        if not keep_running_condition:
            b.set(cond.RUNNING, False, v.reason, "not admitted")
        phase = Phase.queued.value if v.reason == cond.REASON_QUOTA_EXCEEDED else Phase.pending.value
        return Derived(_status({**common, "phase": phase, "reason": v.reason, "message": f"queued: {v.message}"
                                if phase == Phase.queued.value else v.message, "queuePosition": v.position,
                                "estimatedStartTime": iso(v.eta) if v.eta else None, "conditions": b.out}),
                       recheck_at=v.fail_at)
    msg = "waiting for admission"
    b.set(cond.ADMITTED, False, cond.REASON_AWAITING_ADMISSION, msg)
    if not keep_running_condition:
        b.set(cond.RUNNING, False, cond.REASON_AWAITING_ADMISSION, "not admitted")
    return Derived(_status({**common, "phase": Phase.pending.value, "reason": cond.REASON_AWAITING_ADMISSION,
                            "message": msg, "conditions": b.out}))


def _status(fields: dict[str, Any]) -> ResourceStatus:
    return ResourceStatus.model_validate({k: v for k, v in fields.items() if v is not None})
