"""DepthPool, pure: names, the Deployment and Service it becomes, its share of the GPU budget,
and its status. No API calls here (poolctl.py makes them).

Budget: a pool's replicas hold GPUs like admitted Jobs do. Each admission pass first gives
the pools what they ask for (spec.replicas within min/max) as far as the global budget and
their namespace's limit leave after the Jobs already running, oldest pool first, then admits
Jobs from what is left; so pool GPUs are held back from queued Jobs, and a pool is never
scaled past the budget (it is clamped and says so: condition BudgetLimited). Whether a Job
could *ever* run is judged against the total limits (admission.decide), never against what
pools hold, so a pool's minimum cannot make queued work look impossible.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from typing import Any

from spatialforge.crds import constants as c
from spatialforge.crds.pool import LABEL_POOL, PORT, PORT_NAME, ready_urls, serve_env, service_name
from spatialforge.crds.v1alpha1 import depthpool as dp
from spatialforge.crds.v1alpha1.depthpool import DepthPool, DepthPoolSpec
from spatialforge.operator.cache import Key
from spatialforge.operator.settings import OperatorSettings

COMPONENT = "depth-pool"
ANNOTATION_SPEC_HASH = f"{c.GROUP}/pool-spec-hash"
CONTAINER = "server"
ENV_POD_IP = "POD_IP"
child_name = service_name  # the Deployment's and the Service's name (crds/pool.py)


def selector_labels(pool: str) -> dict[str, str]:
    return {LABEL_POOL: pool, c.LABEL_COMPONENT: COMPONENT}


def labels(pool: str) -> dict[str, str]:
    return {**selector_labels(pool), c.LABEL_MANAGED_BY: c.MANAGED_BY}


def selector(pool: str) -> str:
    """The pods' label selector as text (status.selector, the scale subresource's)."""
    return ",".join(f"{k}={v}" for k, v in sorted(selector_labels(pool).items()))


def owner_reference(pool: DepthPool) -> dict[str, Any]:
    return {"apiVersion": c.API_VERSION, "kind": dp.KIND, "name": pool.metadata["name"],
            "uid": pool.metadata["uid"], "controller": True, "blockOwnerDeletion": True}


# -- the budget ---------------------------------------------------------------------------------
@dataclass(frozen=True)
class Ask:
    key: Key
    namespace: str
    created: str  # RFC 3339
    wanted: int  # replicas within min/max
    gpus_per_replica: int


@dataclass(frozen=True)
class Grant:
    replicas: int
    wanted: int
    reason: str  # WithinBudget, ClusterBudget or NamespaceLimit
    message: str

    @property
    def limited(self) -> bool:
        return self.replicas < self.wanted


def grant(asks: list[Ask], *, global_budget: int | None, namespace_limits: dict[str, int],
          jobs_in_use: int, jobs_ns_use: dict[str, int]) -> dict[Key, Grant]:
    """Replicas each pool may run: what it wants, as far as the budget and its namespace's
    limit leave after running Jobs and older pools."""
    used, ns_used = jobs_in_use, dict(jobs_ns_use)
    out: dict[Key, Grant] = {}
    for ask in sorted(asks, key=lambda a: (a.created, a.key)):
        per = ask.gpus_per_replica
        if per == 0:
            out[ask.key] = Grant(ask.wanted, ask.wanted, dp.REASON_WITHIN_BUDGET, "the pool needs no GPUs")
            continue
        fits, reason, message = ask.wanted, dp.REASON_WITHIN_BUDGET, f"{ask.wanted * per} GPUs granted"
        if global_budget is not None:
            free = max(0, global_budget - used)
            if free // per < fits:
                fits, reason = free // per, dp.REASON_CLUSTER_BUDGET
                message = (f"the cluster budget ({global_budget} GPUs, gpuBudget in the quota ConfigMap) leaves "
                           f"{free} GPUs after {used} in use: {fits} of {ask.wanted} replicas")
        ns_limit = namespace_limits.get(ask.namespace)
        if ns_limit is not None:
            ns_free = max(0, ns_limit - ns_used.get(ask.namespace, 0))
            if ns_free // per < fits:
                fits, reason = ns_free // per, dp.REASON_NAMESPACE_LIMIT
                message = (f"namespace {ask.namespace} may use {ns_limit} GPUs (annotation {c.ANNOTATION_GPU_LIMIT}) "
                           f"and {ns_used.get(ask.namespace, 0)} are in use: {fits} of {ask.wanted} replicas")
        used += fits * per
        ns_used[ask.namespace] = ns_used.get(ask.namespace, 0) + fits * per
        out[ask.key] = Grant(fits, ask.wanted, reason, message)
    return out


# -- children -----------------------------------------------------------------------------------
def service(pool: DepthPool) -> dict[str, Any]:
    """A Service whose EndpointSlices list the ready replicas (the front end balances over them
    itself, so it works without kube-proxy, as on the local plane)."""
    name = pool.metadata["name"]
    return {
        "apiVersion": "v1", "kind": "Service",
        "metadata": {"name": child_name(name), "namespace": pool.metadata["namespace"], "labels": labels(name),
                     "ownerReferences": [owner_reference(pool)]},
        "spec": {"selector": selector_labels(name),
                 "ports": [{"name": PORT_NAME, "port": PORT, "targetPort": PORT_NAME, "protocol": "TCP"}]},
    }


def _env(spec: DepthPoolSpec, settings: OperatorSettings) -> list[dict[str, Any]]:
    """The server's settings (runner/serve/config.py reads SPATIALFORGE_SERVE_*). The per-tenant
    in-flight limit is not among them: the front end enforces it across its replicas (Redis)."""
    serve = {"host": f"$({ENV_POD_IP})", "port": str(PORT), "model_size": spec.model.size.value,
             "model_variant": spec.model.variant.value, "max_batch": str(spec.max_batch),
             "max_wait_ms": f"{spec.max_wait_ms:g}", "max_queue": str(spec.max_queue)}
    return [
        {"name": ENV_POD_IP, "valueFrom": {"fieldRef": {"fieldPath": "status.podIP"}}},
        *({"name": serve_env(k), "value": v} for k, v in serve.items()),
        {"name": c.ENV_DEPTH_BACKEND, "value": spec.backend},
        {"name": c.ENV_HF_HOME, "value": "/cache/hf"},
        {"name": c.ENV_MODEL_CACHE, "value": "/cache/models"},
        {"name": c.ENV_BACKEND_CACHE, "value": "/cache/backends"},
        {"name": c.ENV_RESEARCH_MODE, "value": "1" if settings.research_mode else "0"},
    ]


def pod_template(pool: DepthPool, settings: OperatorSettings) -> dict[str, Any]:
    """The replicas' pod: the runner image serving depth on its pod IP, port `http` (8080),
    ready on /readyz (model loaded and warmed up)."""
    name, spec = pool.metadata["name"], pool.spec
    resources: dict[str, Any] = {k: dict(v) for k, v in settings.runner_resources.items()}
    if spec.gpus_per_replica:
        resources["limits"] = {**resources.get("limits", {}), settings.gpu_resource: str(spec.gpus_per_replica)}
    container: dict[str, Any] = {
        "name": CONTAINER,
        "image": settings.runner_image,
        "imagePullPolicy": settings.runner_image_pull_policy,
        "command": [*settings.runner_command, "serve"],
        "args": ["--host", f"$({ENV_POD_IP})", "--port", str(PORT)],
        "env": _env(spec, settings),
        "ports": [{"name": PORT_NAME, "containerPort": PORT, "protocol": "TCP"}],
        "readinessProbe": {"httpGet": {"path": "/readyz", "port": PORT_NAME}, "periodSeconds": 1,
                           "timeoutSeconds": 2, "failureThreshold": 3},
        "livenessProbe": {"httpGet": {"path": "/healthz", "port": PORT_NAME}, "periodSeconds": 10,
                          "timeoutSeconds": 5, "failureThreshold": 6},
        "resources": resources,
        "securityContext": {"allowPrivilegeEscalation": False, "readOnlyRootFilesystem": True,
                            "runAsNonRoot": True, "capabilities": {"drop": ["ALL"]}},
        "volumeMounts": [{"name": "tmp", "mountPath": "/tmp"}, {"name": "cache", "mountPath": "/cache"}],
    }
    if settings.runner_env_from_secret:
        container["envFrom"] = [{"secretRef": {"name": settings.runner_env_from_secret}}]
    pod: dict[str, Any] = {
        "serviceAccountName": settings.runner_service_account,
        "automountServiceAccountToken": False,  # the server never calls the API
        "terminationGracePeriodSeconds": 45,  # the server drains in-flight requests on SIGTERM
        "securityContext": {"runAsNonRoot": True, "runAsUser": 10001, "runAsGroup": 10001, "fsGroup": 10001,
                            "seccompProfile": {"type": "RuntimeDefault"}},
        "containers": [container],
        "volumes": [{"name": "tmp", "emptyDir": {}}, {"name": "cache", "emptyDir": {}}],
    }
    node_selector = {**settings.runner_node_selector, **spec.placement.node_selector}
    if node_selector:
        pod["nodeSelector"] = node_selector
    tolerations = [*settings.runner_tolerations,
                   *(t.model_dump(by_alias=True, exclude_none=True) for t in spec.placement.tolerations)]
    if tolerations:
        pod["tolerations"] = tolerations
    if spec.placement.priority_class_name:
        pod["priorityClassName"] = spec.placement.priority_class_name
    if settings.runner_runtime_class:
        pod["runtimeClassName"] = settings.runner_runtime_class
    return {"metadata": {"labels": labels(name)}, "spec": pod}


def deployment(pool: DepthPool, settings: OperatorSettings, replicas: int) -> dict[str, Any]:
    """The pool's Deployment with `replicas` (what the budget granted). Its pod template's
    hash is kept in an annotation, so a changed pool spec is told from a changed replica count."""
    name = pool.metadata["name"]
    template = pod_template(pool, settings)
    digest = hashlib.sha256(json.dumps(template, sort_keys=True).encode()).hexdigest()[:16]
    return {
        "apiVersion": "apps/v1", "kind": "Deployment",
        "metadata": {"name": child_name(name), "namespace": pool.metadata["namespace"], "labels": labels(name),
                     "annotations": {ANNOTATION_SPEC_HASH: digest},
                     "ownerReferences": [owner_reference(pool)]},
        "spec": {
            "replicas": replicas,
            "selector": {"matchLabels": selector_labels(name)},
            # Never more replicas than granted, even for a moment: surge would exceed the budget.
            "strategy": {"type": "RollingUpdate", "rollingUpdate": {"maxSurge": 0, "maxUnavailable": 1}},
            "template": template,
        },
    }


# -- status -------------------------------------------------------------------------------------
def ready_endpoints(slices: list[dict[str, Any]]) -> int:
    """Ready endpoints over a Service's EndpointSlices (what a client can balance over)."""
    return len(ready_urls(slices))
