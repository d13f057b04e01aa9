"""Prometheus metrics of the operator (served on settings.metrics_port at /metrics)."""

from prometheus_client import Counter, Gauge, Histogram

RECONCILE_SECONDS = Histogram("spatialforge_operator_reconcile_seconds", "Time of one reconcile pass of a resource",
                              buckets=(0.001, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5))
ADMISSION_SECONDS = Histogram("spatialforge_operator_admission_latency_seconds",
                              "From resource creation to its Job's creation",
                              buckets=(0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 300, 1800))
QUEUE_DEPTH = Gauge("spatialforge_operator_queue_depth", "Resources waiting for GPU quota")
GPUS_IN_USE = Gauge("spatialforge_operator_gpus_admitted", "GPUs held by admitted resources")
RESOURCES = Gauge("spatialforge_operator_resources", "Resources by kind and phase", ["kind", "phase"])
TRANSITIONS = Counter("spatialforge_operator_phase_transitions_total", "Phase transitions", ["kind", "phase"])
IS_LEADER = Gauge("spatialforge_operator_leader", "1 while this replica holds the leader lease")
ADMISSIONS = Counter("spatialforge_operator_admissions_total", "Resources admitted to GPU quota (Jobs created or resumed)")
STATUS_CORRECTIONS = Counter("spatialforge_operator_status_corrections_total",
                             "Status writes that put back a phase or GPU-seconds someone else wrote", ["kind"])
LEASE_TAKEOVERS = Counter("spatialforge_operator_lease_takeovers_total",
                          "Times this replica took the leader lease over from another holder")
POOL_HANDOFFS = Counter("spatialforge_operator_pool_handoffs_total",
                        "DepthBatches handed to a DepthPool, by outcome (succeeded, failed_input, failed_pool, resumed)",
                        ["outcome"])
