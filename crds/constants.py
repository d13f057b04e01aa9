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

# The runner reports invalid input with this exit code; the Job's podFailurePolicy fails the
# Job at once on it. Any other non-zero code is a retryable failure.
EXIT_INVALID_INPUT: Final = 42

# Environment the operator gives runner pods.
ENV_RESOURCE_KIND: Final = "SPATIALFORGE_KIND"
ENV_RESOURCE_NAME: Final = "SPATIALFORGE_NAME"
ENV_RESOURCE_NAMESPACE: Final = "SPATIALFORGE_NAMESPACE"
