"""What a runner Job and its pods say, read from their cached dicts: Job conditions, how long
pods ran (GPU-seconds), why a Job failed, and pods that cannot start (fail fast).

Pure: no I/O, and no clock of its own (`now` comes in). `derive.py` builds the status from
these; the reconciler and the admitter read the same facts here, so each is decided once.
"""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass
from typing import Any

from spatialforge.crds import constants as c
from spatialforge.crds.v1alpha1 import conditions as cond
from spatialforge.operator.settings import OperatorSettings

FAIL_FAST_WAITING = frozenset({"ImagePullBackOff", "ErrImagePull", "InvalidImageName", "CreateContainerConfigError",
                               "CreateContainerError", "ErrImageNeverPull"})


def parse_time(value: str | None) -> dt.datetime | None:
    if not value:
        return None
    return dt.datetime.fromisoformat(value)  # Python 3.11 reads the "Z" of Kubernetes timestamps


def job_condition(job: dict[str, Any] | None, type_: str) -> dict[str, Any] | None:
    for item in ((job or {}).get("status") or {}).get("conditions") or []:
        if item.get("type") == type_ and item.get("status") == "True":
            return item
    return None


def job_finished(job: dict[str, Any] | None) -> bool:
    return bool(job_condition(job, "Complete") or job_condition(job, "Failed"))


def pod_seconds(pod: dict[str, Any], now: dt.datetime) -> float:
    total = 0.0
    for cs in (pod.get("status") or {}).get("containerStatuses") or []:
        state = cs.get("state") or {}
        if "terminated" in state:
            start, end = parse_time(state["terminated"].get("startedAt")), parse_time(state["terminated"].get("finishedAt"))
        elif "running" in state:
            start, end = parse_time(state["running"].get("startedAt")), now
        else:
            continue
        if start and end:
            total += max(0.0, (end - start).total_seconds())
    return total


def gpu_seconds(gpus: int, pods: list[dict[str, Any]], ledger: dict[str, float], now: dt.datetime) -> float:
    """GPUs per pod x seconds each pod ran: pods still present, plus the ledger of gone ones."""
    live = sum(pod_seconds(p, now) * gpus for p in pods if p["metadata"].get("uid") not in ledger)
    return round(live + sum(ledger.values()), 3)


def failure_reason(failed: dict[str, Any], pods: list[dict[str, Any]]) -> tuple[str, str]:
    """Reason and message of a Job that failed."""
    job_reason = failed.get("reason") or ""
    for pod in pods:
        for cs in (pod.get("status") or {}).get("containerStatuses") or []:
            term = (cs.get("state") or {}).get("terminated") or {}
            if term.get("exitCode") == c.EXIT_INVALID_INPUT:
                return cond.REASON_INVALID_INPUT, term.get("message") or "the runner rejected its input"
    if job_reason == "PodFailurePolicy":
        return cond.REASON_INVALID_INPUT, failed.get("message") or "the runner rejected its input"
    if job_reason == "DeadlineExceeded":
        return cond.REASON_DEADLINE, failed.get("message") or "activeDeadlineSeconds exceeded"
    last = ""
    for pod in pods:
        for cs in (pod.get("status") or {}).get("containerStatuses") or []:
            term = (cs.get("state") or {}).get("terminated") or {}
            if term.get("exitCode"):
                last = f"last exit code {term['exitCode']} ({term.get('reason', 'Error')}): {term.get('message', '')}".strip()
    return cond.REASON_BACKOFF_LIMIT, (failed.get("message") or "retries exhausted") + (f"; {last}" if last else "")


@dataclass(frozen=True)
class PodTrouble:
    """A runner pod that cannot start: fail now (`fail`) or wait until `until`."""

    reason: str
    message: str
    fail: bool
    until: dt.datetime | None = None


def pod_trouble(pods: list[dict[str, Any]], settings: OperatorSettings, now: dt.datetime) -> PodTrouble | None:
    """The first pod the scheduler cannot place, or whose container cannot start."""
    waiting: PodTrouble | None = None
    for pod in pods:
        pstatus = pod.get("status") or {}
        if pstatus.get("phase") not in (None, "Pending"):
            continue
        name = pod["metadata"]["name"]
        for pc in pstatus.get("conditions") or []:
            if pc.get("type") == "PodScheduled" and pc.get("status") == "False" and pc.get("reason") == "Unschedulable":
                since = parse_time(pc.get("lastTransitionTime")) or now
                until = since + dt.timedelta(seconds=settings.unschedulable_timeout_seconds)
                msg = f"runner pod {name} unschedulable: {pc.get('message', '')}".rstrip(": ")
                if now >= until:
                    return PodTrouble(cond.REASON_UNSCHEDULABLE, msg, fail=True)
                waiting = waiting or PodTrouble(cond.REASON_UNSCHEDULABLE, msg, fail=False, until=until)
        for cs in pstatus.get("containerStatuses") or []:
            w = (cs.get("state") or {}).get("waiting") or {}
            if w.get("reason") in FAIL_FAST_WAITING:
                created = parse_time(pod["metadata"].get("creationTimestamp")) or now
                until = created + dt.timedelta(seconds=settings.image_pull_grace_seconds)
                reason = cond.REASON_IMAGE_PULL if "Image" in w["reason"] else cond.REASON_CONTAINER_CONFIG
                msg = f"runner pod {name}: {w['reason']}: {w.get('message', '')}"
                if now >= until:
                    return PodTrouble(reason, msg, fail=True)
                waiting = waiting or PodTrouble(reason, msg, fail=False, until=until)
    return waiting


def pods_missing_since(job: dict[str, Any], pods: list[dict[str, Any]], settings: OperatorSettings) -> dt.datetime | None:
    """When a running Job that still has no pod at all is worth asking for FailedCreate events
    (quota, admission policy); None when it has pods or counts any."""
    jstatus = job.get("status") or {}
    if pods or (job.get("spec") or {}).get("suspend") or any(
            int(jstatus.get(k) or 0) for k in ("active", "failed", "succeeded", "terminating", "ready")):
        return None
    created = parse_time(job["metadata"].get("creationTimestamp"))
    if created is None:
        return None
    return created + dt.timedelta(seconds=settings.unschedulable_timeout_seconds)
