"""Pure builders of the child batch/v1 Job (no API calls here)."""

from __future__ import annotations

import hashlib
from typing import Any

from spatialforge.crds import constants as c
from spatialforge.crds.kinds import kind_of
from spatialforge.crds.policy import MAX_JOB_NAME
from spatialforge.crds.v1alpha1 import DepthBatch, ReconstructionJob
from spatialforge.operator.settings import OperatorSettings

CONTAINER = "runner"
Resource = DepthBatch | ReconstructionJob


def parse(obj: dict[str, Any]) -> Resource:
    """The whole resource as its kind's model (ValidationError when it does not validate)."""
    res = kind_of(obj["kind"]).parse(obj)
    assert isinstance(res, DepthBatch | ReconstructionJob)
    return res


def job_name(kind: str, name: str, uid: str) -> str:
    """Deterministic child name: the same resource always maps to the same Job, and a
    resource re-created under the same name (new uid) never adopts its predecessor's Job.

    At most `MAX_JOB_NAME` (54) characters, so every pod's name keeps the whole Job name, uid
    hash included: the runner-status policy tells resources apart by it. Jobs made before
    this limit (60 characters) are found by their owner labels, never by this name."""
    suffix = f"{kind_of(kind).code}{hashlib.sha256(uid.encode()).hexdigest()[:6]}"
    return f"{name[: MAX_JOB_NAME - len(suffix) - 1].rstrip('-.')}-{suffix}"


def labels(res: Resource) -> dict[str, str]:
    meta = res.metadata
    out = {
        c.LABEL_MANAGED_BY: c.MANAGED_BY,
        c.LABEL_COMPONENT: "runner",
        c.LABEL_KIND: res.kind,
        c.LABEL_NAME: meta["name"],
        c.LABEL_UID: meta["uid"],
    }
    tenant = (meta.get("labels") or {}).get(c.LABEL_TENANT)
    if tenant:
        out[c.LABEL_TENANT] = tenant
    return out


def owner_reference(res: Resource) -> dict[str, Any]:
    return {
        "apiVersion": c.API_VERSION,
        "kind": res.kind,
        "name": res.metadata["name"],
        "uid": res.metadata["uid"],
        "controller": True,
        "blockOwnerDeletion": True,
    }


def build_job(res: Resource, settings: OperatorSettings, *, suspend: bool) -> dict[str, Any]:
    """The Job that runs a resource: one pod per shard, GPUs, hardening, failure policy."""
    meta, spec = res.metadata, res.spec
    shards = spec.shards
    job_labels = labels(res)
    if spec.queue_name:
        job_labels[c.KUEUE_QUEUE_LABEL] = spec.queue_name
    limits: dict[str, str] = dict(settings.runner_resources.get("limits", {}))
    if spec.placement.gpus:
        limits[settings.gpu_resource] = str(spec.placement.gpus)
    env = [
        {"name": c.ENV_RESOURCE_KIND, "value": res.kind},
        {"name": c.ENV_RESOURCE_NAME, "value": meta["name"]},
        {"name": c.ENV_RESOURCE_NAMESPACE, "value": meta["namespace"]},
        # The root filesystem is read-only: caches go to the writable emptyDir.
        {"name": c.ENV_HF_HOME, "value": "/cache/hf"},
        {"name": c.ENV_MODEL_CACHE, "value": "/cache/models"},
        {"name": c.ENV_RESEARCH_MODE, "value": "1" if settings.research_mode else "0"},
    ]
    container: dict[str, Any] = {
        "name": CONTAINER,
        "image": settings.runner_image,
        "imagePullPolicy": settings.runner_image_pull_policy,
        "command": list(settings.runner_command),
        "env": env,
        "resources": {"requests": dict(settings.runner_resources.get("requests", {})), "limits": limits},
        "securityContext": {
            "allowPrivilegeEscalation": False,
            "readOnlyRootFilesystem": True,
            "runAsNonRoot": True,
            "capabilities": {"drop": ["ALL"]},
        },
        "volumeMounts": [{"name": "tmp", "mountPath": "/tmp"}, {"name": "cache", "mountPath": "/cache"}],
        "terminationMessagePolicy": "FallbackToLogsOnError",
    }
    if settings.runner_env_from_secret:
        container["envFrom"] = [{"secretRef": {"name": settings.runner_env_from_secret}}]
    pod_spec: dict[str, Any] = {
        "restartPolicy": "Never",
        "serviceAccountName": settings.runner_service_account,
        "securityContext": {"runAsNonRoot": True, "runAsUser": 10001, "runAsGroup": 10001, "fsGroup": 10001,
                            "seccompProfile": {"type": "RuntimeDefault"}},
        "containers": [container],
        "volumes": [{"name": "tmp", "emptyDir": {}}, {"name": "cache", "emptyDir": {}}],
    }
    placement = spec.placement
    node_selector = {**settings.runner_node_selector, **placement.node_selector}
    if node_selector:
        pod_spec["nodeSelector"] = node_selector
    tolerations = [*settings.runner_tolerations,
                   *(t.model_dump(by_alias=True, exclude_none=True) for t in placement.tolerations)]
    if tolerations:
        pod_spec["tolerations"] = tolerations
    if placement.priority_class_name:
        pod_spec["priorityClassName"] = placement.priority_class_name
    if settings.runner_runtime_class:
        pod_spec["runtimeClassName"] = settings.runner_runtime_class
    job_spec: dict[str, Any] = {
        "completions": shards,
        "parallelism": shards,
        "completionMode": "Indexed",
        "backoffLimit": spec.backoff_limit,
        "suspend": suspend,
        "podFailurePolicy": {
            "rules": [
                # Invalid input will not get better on retry: fail the whole Job now.
                {"action": "FailJob",
                 "onExitCodes": {"containerName": CONTAINER, "operator": "In", "values": [c.EXIT_INVALID_INPUT]}},
                # Evictions, preemptions and node drains are not the runner's fault.
                {"action": "Ignore", "onPodConditions": [{"type": "DisruptionTarget", "status": "True"}]},
            ]
        },
        "template": {"metadata": {"labels": dict(job_labels)}, "spec": pod_spec},
    }
    if spec.active_deadline_seconds:
        job_spec["activeDeadlineSeconds"] = spec.active_deadline_seconds
    return {
        "apiVersion": "batch/v1",
        "kind": "Job",
        "metadata": {
            "name": job_name(res.kind, meta["name"], meta["uid"]),
            "namespace": meta["namespace"],
            "labels": job_labels,
            "ownerReferences": [owner_reference(res)],
        },
        "spec": job_spec,
    }
