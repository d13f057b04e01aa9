"""The runner's status write, narrowed by the API server itself: a ValidatingAdmissionPolicy.

RBAC can only say "may patch the status subresource". This policy says which part: a request
from a runner service account must come with a token bound to a pod (the kubelet's, or the
node agent's on the local plane) whose name is one of the pods of the resource's own Job
(`status.jobName`), and it may change nothing but `status.progress.shards[<that pod's index>]`.

An Indexed Job's pod is named `<jobName>-<index>-<5 random>`, the Job name cut short so that
`<jobName>-<index>-` stays within 58 characters. Job names are made short enough
(`MAX_JOB_NAME`) that nothing is cut for any allowed shard count, so the pod's prefix must be
the whole Job name, uid hash included. Only a Job name longer than that, made by an operator
before names were shortened, is matched by prefix (it may have lost its uid hash): that
allowance lasts only as long as such Jobs do. The field lists come from the status models, so
a new status field is protected as soon as it exists.
"""

from __future__ import annotations

from typing import Any, Final

from pydantic import BaseModel
from pydantic_core import PydanticUndefined

from spatialforge.crds.constants import GROUP
from spatialforge.crds.kinds import KINDS, STATUS_RESOURCES
from spatialforge.crds.rbac import RUNNER_SERVICE_ACCOUNT
from spatialforge.crds.v1alpha1.common import Progress, ResourceStatus

POLICY_NAME: Final = f"runner-status.{GROUP}"
POD_NAME_EXTRA: Final = "authentication.kubernetes.io/pod-name"
# Kubernetes' generated-name limits (apiserver/pkg/storage/names): prefix <= 58, then 5 random.
_MAX_GENERATE_NAME: Final = 58
_RANDOM_SUFFIX: Final = 5


def max_shards() -> int:
    """The most pods one resource's Indexed Job has: the largest `parallelism` any kind's spec
    allows (a kind without it runs one pod)."""
    most = 1
    for kind in KINDS:
        field = kind.spec_model.model_fields.get("parallelism")
        if field is not None:
            most = max(most, *(m.le for m in field.metadata if getattr(m, "le", None) is not None))
    return most


MAX_SHARDS: Final = max_shards()
MAX_JOB_NAME: Final = _MAX_GENERATE_NAME - len(f"-{MAX_SHARDS - 1}-")
"""The longest child Job name whose pods' names keep all of it: `<job>-<index>-` fits the
generated-name prefix for every shard index."""

_VARIABLES = [
    ("pod", f"'{POD_NAME_EXTRA}' in request.userInfo.extra && size(request.userInfo.extra['{POD_NAME_EXTRA}']) == 1"
            f" ? request.userInfo.extra['{POD_NAME_EXTRA}'][0] : ''"),
    ("job", "has(oldObject.status) && has(oldObject.status.jobName) && oldObject.status.jobName != null"
            " ? string(oldObject.status.jobName) : ''"),
    ("tail", f"variables.pod.find('-[0-9]+-[a-z0-9]{{{_RANDOM_SUFFIX}}}$')"),
    ("index", "variables.tail == '' ? '' : variables.tail.split('-')[1]"),
    ("prefix", "variables.pod.substring(0, size(variables.pod) - size(variables.tail))"),
    # Exact for every Job this operator names; a prefix only for a longer (pre-upgrade) name.
    ("ownPod", "variables.job != '' && variables.tail != '' && variables.prefix != '' && ("
               "variables.prefix == variables.job || ("
               f"size(variables.job) > {MAX_JOB_NAME}"
               f" && size(variables.pod) == {_MAX_GENERATE_NAME + _RANDOM_SUFFIX}"
               " && variables.job.startsWith(variables.prefix)))"),
]


def _unchanged(new: str, old: str, field: str, default: Any) -> str:
    """CEL: `field` of `new` equals that of `old`, absent counting as its schema default."""
    literal = _literal(default)
    return f"(has({new}.{field}) ? {new}.{field} : {literal}) == (has({old}.{field}) ? {old}.{field} : {literal})"


def _fields(model: type[BaseModel], skip: str) -> list[tuple[str, Any]]:
    """(wire name, schema default or None) of each field of a status model, but `skip`."""
    out = []
    for name, info in model.model_fields.items():
        alias = info.alias or name
        if alias == skip:
            continue
        default = info.default if info.default is not PydanticUndefined else None
        if isinstance(default, (list, dict)) or info.default_factory is not None:
            default = None
        out.append((alias, default))
    return out


def _validations() -> list[dict[str, str]]:
    own = "!variables.ownPod || "
    out = [
        {"expression": "variables.ownPod",
         "messageExpression": "'a runner may patch only the status of the resource whose Job runs its pod (pod ' "
                              "+ (variables.pod == '' ? '<token not bound to a pod>' : variables.pod) + ', Job ' "
                              "+ (variables.job == '' ? '<none>' : variables.job) + ')'",
         "reason": "Forbidden"},
        {"expression": own + "has(object.status)", "message": "a runner may not remove the status",
         "reason": "Forbidden"},
    ]
    for field, default in _fields(ResourceStatus, skip="progress"):
        out.append({"expression": own + _unchanged("object.status", "oldObject.status", field, default),
                    "message": f"a runner may not change status.{field}", "reason": "Forbidden"})
    new_p, old_p = "object.status.progress", "oldObject.status.progress"
    has_new, has_old = "has(object.status.progress)", "has(oldObject.status.progress)"
    for field, default in _fields(Progress, skip="shards"):
        new = f"({has_new} && has({new_p}.{field}) ? {new_p}.{field} : {_literal(default)})"
        old = f"({has_old} && has({old_p}.{field}) ? {old_p}.{field} : {_literal(default)})"
        out.append({"expression": f"{own}{new} == {old}",
                    "message": f"a runner may not change status.progress.{field}", "reason": "Forbidden"})
    new_s = f"({has_new} && has({new_p}.shards) ? {new_p}.shards : {{}})"
    old_s = f"({has_old} && has({old_p}.shards) ? {old_p}.shards : {{}})"
    out.append({
        "expression": f"{own}{old_s}.all(k, k == variables.index || (k in {new_s} && {new_s}[k] == {old_s}[k]))"
                      f" && {new_s}.all(k, k == variables.index || k in {old_s})",
        "messageExpression": "'a runner may change only its own shard: status.progress.shards[' + variables.index + ']'",
        "reason": "Forbidden",
    })
    return out


def _literal(default: Any) -> str:
    if default is None:
        return "null"
    if isinstance(default, bool):
        return "true" if default else "false"
    if isinstance(default, str):
        return "'" + default.replace("'", "\\'") + "'"
    return repr(default)


def runner_status_policy(service_account: str = RUNNER_SERVICE_ACCOUNT,
                         name: str = POLICY_NAME) -> list[dict[str, Any]]:
    """The policy and its binding (cluster-wide; only runner service accounts are matched)."""
    policy = {
        "apiVersion": "admissionregistration.k8s.io/v1",
        "kind": "ValidatingAdmissionPolicy",
        "metadata": {"name": name},
        "spec": {
            "failurePolicy": "Fail",
            "matchConstraints": {"resourceRules": [{
                "apiGroups": [GROUP], "apiVersions": ["*"], "operations": ["UPDATE"],
                "resources": list(STATUS_RESOURCES),
            }]},
            "matchConditions": [{
                "name": "runner-service-account",
                "expression": "request.userInfo.username.startsWith('system:serviceaccount:') && "
                              f"request.userInfo.username.endsWith(':{service_account}')",
            }],
            "variables": [{"name": n, "expression": e} for n, e in _VARIABLES],
            "validations": _validations(),
        },
    }
    binding = {
        "apiVersion": "admissionregistration.k8s.io/v1",
        "kind": "ValidatingAdmissionPolicyBinding",
        "metadata": {"name": name},
        "spec": {"policyName": name, "validationActions": ["Deny"]},
    }
    return [policy, binding]
