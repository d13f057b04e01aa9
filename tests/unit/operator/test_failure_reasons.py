"""How a failed Job or a stuck pod maps onto the resource's reason (pure: derive.py)."""

import datetime as dt

from spatialforge.crds.constants import EXIT_INVALID_INPUT
from spatialforge.operator.jobs import failure_reason, pod_trouble
from spatialforge.operator.settings import OperatorSettings

NOW = dt.datetime(2026, 1, 1, 12, tzinfo=dt.UTC)
SETTINGS = OperatorSettings(unschedulable_timeout_seconds=300, image_pull_grace_seconds=60)


def pod(code: int, message: str = "") -> dict:
    return {"status": {"containerStatuses": [{"state": {"terminated": {"exitCode": code, "message": message,
                                                                       "reason": "Error"}}}]}}


def test_invalid_input_exit_code_wins() -> None:
    reason, message = failure_reason({"reason": "PodFailurePolicy"}, [pod(EXIT_INVALID_INPUT, "a.jpg: truncated")])
    assert (reason, message) == ("InvalidInput", "a.jpg: truncated")


def test_deadline() -> None:
    reason, _ = failure_reason({"reason": "DeadlineExceeded", "message": "Job was active longer than specified deadline"}, [])
    assert reason == "DeadlineExceeded"


def test_backoff_names_the_last_exit() -> None:
    reason, message = failure_reason({"reason": "BackoffLimitExceeded", "message": "Job has reached the specified backoff limit"},
                                     [pod(137, "")])
    assert reason == "BackoffLimitExceeded" and "exit code 137" in message


def waiting(reason: str, created: str) -> dict:
    return {"metadata": {"name": "p", "namespace": "n", "creationTimestamp": created, "labels": {}},
            "status": {"phase": "Pending", "containerStatuses": [{"state": {"waiting": {"reason": reason, "message": "nope"}}}]}}


def test_image_pull_fails_after_the_grace_and_waits_before() -> None:
    assert pod_trouble([waiting("ImagePullBackOff", "2026-01-01T11:00:00Z")], SETTINGS, NOW).fail
    early = pod_trouble([waiting("ImagePullBackOff", "2026-01-01T11:59:30Z")], SETTINGS, NOW)
    assert not early.fail and early.reason == "ImagePullFailed" and early.until == NOW + dt.timedelta(seconds=30)


def test_container_config_error_is_its_own_reason() -> None:
    t = pod_trouble([waiting("CreateContainerConfigError", "2026-01-01T11:00:00Z")], SETTINGS, NOW)
    assert t.fail and t.reason == "ContainerConfigError" and "CreateContainerConfigError: nope" in t.message


def test_unschedulable_shows_the_scheduler_message_at_once() -> None:
    p = {"metadata": {"name": "p", "namespace": "n"}, "status": {"phase": "Pending", "conditions": [
        {"type": "PodScheduled", "status": "False", "reason": "Unschedulable",
         "message": "0/2 nodes are available: 2 Insufficient nvidia.com/gpu.", "lastTransitionTime": "2026-01-01T11:59:59Z"}]}}
    t = pod_trouble([p], SETTINGS, NOW)
    assert not t.fail and t.reason == "Unschedulable" and "2 Insufficient nvidia.com/gpu" in t.message
    assert pod_trouble([p], SETTINGS, NOW + dt.timedelta(seconds=301)).fail
