"""Condition types and reasons. Machines read these; keep them stable."""

from typing import Final

# Condition types.
ADMITTED: Final = "Admitted"  # True once the resource holds GPU quota and has its Job.
RUNNING: Final = "Running"  # True while a runner pod is active.
SUSPENDED: Final = "Suspended"  # True while spec.suspend holds the work back.
SUCCEEDED: Final = "Succeeded"  # Terminal: every output and the manifest are written.
FAILED: Final = "Failed"  # Terminal: see the reason.
POOL_HAND_OFF: Final = "PoolHandOff"  # False when a hand-off to a DepthPool failed (a Job runs it).

# Reasons.
REASON_QUOTA_EXCEEDED: Final = "QuotaExceeded"  # Queued behind the global or tenant GPU limit.
REASON_WAITING_FOR_KUEUE: Final = "WaitingForKueue"  # The Job is suspended until Kueue admits it.
REASON_ADMITTED: Final = "Admitted"
REASON_JOB_CREATED: Final = "JobCreated"
REASON_POD_RUNNING: Final = "PodRunning"
REASON_POD_PENDING: Final = "PodPending"
REASON_SUSPENDED: Final = "SuspendedBySpec"
REASON_COMPLETED: Final = "Completed"
REASON_INVALID_INPUT: Final = "InvalidInput"  # The runner rejected its input; never retried.
REASON_BACKOFF_LIMIT: Final = "BackoffLimitExceeded"  # Retries used up.
REASON_DEADLINE: Final = "DeadlineExceeded"  # spec.activeDeadlineSeconds passed.
REASON_UNSCHEDULABLE: Final = "Unschedulable"  # No node could take the pod in time.
REASON_IMAGE_PULL: Final = "ImagePullFailed"
REASON_CONTAINER_CONFIG: Final = "ContainerConfigError"
REASON_POD_CREATION: Final = "PodCreationFailed"  # The Job controller could not create pods.
REASON_INVALID_SPEC: Final = "InvalidSpec"
REASON_JOB_LOST: Final = "JobDeleted"  # Someone deleted the Job underneath a running resource.
REASON_AWAITING_ADMISSION: Final = "AwaitingAdmission"  # Not yet seen by an admission pass.
REASON_CANCELLED_BY_USER: Final = "CancelledByUser"  # Cancelled through the REST front end.
REASON_EXCEEDS_BUDGET: Final = "ExceedsClusterBudget"  # Needs more GPUs than the global budget.
REASON_EXCEEDS_NAMESPACE_LIMIT: Final = "ExceedsNamespaceLimit"  # Needs more GPUs than its namespace may use.
REASON_NO_FITTING_NODE: Final = "NoFittingNode"  # No current node offers the GPUs, labels or tolerations.
REASON_RUN_BY_POOL: Final = "RunByPool"  # A warm DepthPool ran the batch (no Job).
REASON_HAND_OFF_FAILED: Final = "HandOffFailed"  # The pool answered 5xx, timed out or was unreachable.
