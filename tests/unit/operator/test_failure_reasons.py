"""How a failed Job maps onto the resource's reason (no API calls involved)."""

from spatialforge.crds.constants import EXIT_INVALID_INPUT
from spatialforge.operator.cache import Cache
from spatialforge.operator.reconciler import Reconciler
from spatialforge.operator.settings import OperatorSettings

R = Reconciler(kube=None, cache=Cache(), settings=OperatorSettings())  # type: ignore[arg-type]


def pod(code: int, message: str = "") -> dict:
    return {"status": {"containerStatuses": [{"state": {"terminated": {"exitCode": code, "message": message,
                                                                       "reason": "Error"}}}]}}


def test_invalid_input_exit_code_wins() -> None:
    reason, message = R._failure_reason({"reason": "PodFailurePolicy"}, [pod(EXIT_INVALID_INPUT, "a.jpg: truncated")])
    assert (reason, message) == ("InvalidInput", "a.jpg: truncated")


def test_deadline() -> None:
    reason, _ = R._failure_reason({"reason": "DeadlineExceeded", "message": "Job was active longer than specified deadline"}, [])
    assert reason == "DeadlineExceeded"


def test_backoff_names_the_last_exit() -> None:
    reason, message = R._failure_reason({"reason": "BackoffLimitExceeded", "message": "Job has reached the specified backoff limit"},
                                        [pod(137, "")])
    assert reason == "BackoffLimitExceeded" and "exit code 137" in message


def test_fail_fast_on_image_pull() -> None:
    waiting = {"metadata": {"name": "p", "namespace": "n", "creationTimestamp": "2000-01-01T00:00:00Z", "labels": {}},
               "status": {"phase": "Pending", "containerStatuses": [{"state": {"waiting": {"reason": "ImagePullBackOff", "message": "nope"}}}]}}
    assert R._fail_fast([waiting]) == ("ImagePullFailed", "runner pod p: ImagePullBackOff: nope")
