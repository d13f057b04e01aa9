"""API group, label and annotation keys shared by every component."""

from typing import Final

GROUP: Final = "spatialforge.io"
VERSION: Final = "v1alpha1"
API_VERSION: Final = f"{GROUP}/{VERSION}"
CATEGORY: Final = "spatialforge"

# Labels the operator puts on every child Job and Pod, and the front end on every resource.
LABEL_KIND: Final = f"{GROUP}/kind"
LABEL_NAME: Final = f"{GROUP}/name"
LABEL_UID: Final = f"{GROUP}/uid"
LABEL_TENANT: Final = f"{GROUP}/tenant"
LABEL_COMPONENT: Final = "app.kubernetes.io/component"
LABEL_MANAGED_BY: Final = "app.kubernetes.io/managed-by"
MANAGED_BY: Final = "spatialforge-operator"

# Kueue's queue label: when a spec names a queue, Kueue admits the (suspended) Job.
KUEUE_QUEUE_LABEL: Final = "kueue.x-k8s.io/queue-name"

# The finalizer the operator owns (Kopf's own is disabled in favour of this one).
FINALIZER: Final = f"{GROUP}/cleanup"

# Per-namespace (tenant) GPU limit: one annotation on the Namespace, settable by kubectl users
# and by the REST front end alike. Absent means "only the global budget applies".
ANNOTATION_GPU_LIMIT: Final = f"{GROUP}/gpu-limit"

# What the operator keeps on a resource for itself, outside the status (which others can write):
# the terminal outcome (phase, reason, times, GPU-seconds) once reached, and the GPU-seconds of
# runner pods that are gone. Runners may only patch status, so they cannot touch these.
ANNOTATION_OUTCOME: Final = f"{GROUP}/outcome"
ANNOTATION_GPU_LEDGER: Final = f"{GROUP}/gpu-seconds-ledger"

# The runner reports invalid input with this exit code; the Job's podFailurePolicy fails the
# Job at once on it. Any other non-zero code is a retryable failure.
EXIT_INVALID_INPUT: Final = 42

# Environment the operator gives runner pods.
ENV_RESOURCE_KIND: Final = "SPATIALFORGE_KIND"
ENV_RESOURCE_NAME: Final = "SPATIALFORGE_NAME"
ENV_RESOURCE_NAMESPACE: Final = "SPATIALFORGE_NAMESPACE"
# The rest of the runner's environment (read by runner/settings.py; the operator sets some).
ENV_SHARD_INDEX: Final = "JOB_COMPLETION_INDEX"  # set by Kubernetes for an Indexed Job's pod
ENV_KUBECONFIG: Final = "KUBECONFIG"
ENV_MODEL_DIR: Final = "SPATIALFORGE_MODEL_DIR"
ENV_MODEL_CACHE: Final = "SPATIALFORGE_MODEL_CACHE"
ENV_HF_HOME: Final = "HF_HOME"
ENV_HUB_DOWNLOAD: Final = "SPATIALFORGE_HUB_DOWNLOAD"
ENV_RESEARCH_MODE: Final = "SPATIALFORGE_RESEARCH_MODE"
ENV_DEVICE: Final = "SPATIALFORGE_DEVICE"
ENV_FP16: Final = "SPATIALFORGE_FP16"
ENV_DECODE_SLOTS: Final = "SPATIALFORGE_DECODE_SLOTS"
ENV_DEPTH_BACKEND: Final = "SPATIALFORGE_DEPTH_BACKEND"
ENV_BACKEND_CACHE: Final = "SPATIALFORGE_BACKEND_CACHE"
ENV_TERMINATION_LOG: Final = "SPATIALFORGE_TERMINATION_LOG"
ENV_PROGRESS_INTERVAL: Final = "SPATIALFORGE_PROGRESS_INTERVAL"
ENV_S3_ENDPOINT: Final = "SPATIALFORGE_S3_ENDPOINT"
ENV_S3_SECRET_DIR: Final = "SPATIALFORGE_S3_SECRET_DIR"
ENV_S3_RETRY_MODE: Final = "SPATIALFORGE_S3_RETRY_MODE"
ENV_S3_OBJECT_TAGGING: Final = "SPATIALFORGE_S3_OBJECT_TAGGING"
# Object tag the bucket's lifecycle rules (installed by the front end) expire objects by:
# uploads carry `<RETENTION_TAG>=upload`, runner outputs `<RETENTION_TAG>=result`.
RETENTION_TAG: Final = "spatialforge-retention"
RETENTION_UPLOAD: Final = "upload"
RETENTION_RESULT: Final = "result"
