"""In-process view of our resources, their Jobs and pods, and the GPU limits.

A cache, not the source of truth: it is filled by one listing at start-up and kept fresh by
Kopf's watch events; everything the operator decides is written back to the resources.
"""

from __future__ import annotations

import sys
from dataclasses import dataclass, field
from typing import Any

from pydantic import ValidationError

from spatialforge.crds import constants as c
from spatialforge.crds.kinds import kind_of

Key = tuple[str, str, str]  # (kind, namespace, name)


def resource_key(obj: dict[str, Any]) -> Key:
    return (obj["kind"], obj["metadata"]["namespace"], obj["metadata"]["name"])


def owner_key(obj: dict[str, Any]) -> Key | None:
    """The resource a Job or pod belongs to, from the labels the operator gave it."""
    labels = obj["metadata"].get("labels") or {}
    kind, name = labels.get(c.LABEL_KIND), labels.get(c.LABEL_NAME)
    if not kind or not name:
        return None
    return (kind, obj["metadata"]["namespace"], name)


def newer(new: dict[str, Any], old: dict[str, Any] | None) -> bool:
    """Whether `new` is at least as recent as `old`. Watch events can arrive after the
    operator's own write returned a newer version; they must not roll the cache back."""
    if old is None or old["metadata"].get("uid") != new["metadata"].get("uid"):
        return True
    try:
        return int(new["metadata"]["resourceVersion"]) >= int(old["metadata"]["resourceVersion"])
    except (KeyError, ValueError):
        return True  # resourceVersions are opaque in general; etcd's are integers


def _same_version(cached: dict[str, Any] | None, obj: dict[str, Any]) -> bool:
    if cached is None:
        return False
    have, new = cached["metadata"], obj["metadata"]
    return have.get("uid") == new.get("uid") and new.get("resourceVersion") is not None \
        and have.get("resourceVersion") == new.get("resourceVersion")


def owner_uid(obj: dict[str, Any]) -> str | None:
    return (obj["metadata"].get("labels") or {}).get(c.LABEL_UID)


def slim(obj: dict[str, Any], *, drop_spec_keys: tuple[str, ...] = ()) -> dict[str, Any]:
    """A copy without what the operator never reads: managedFields, kubectl's
    last-applied annotation, and (for Jobs and pods) the pod template/spec. At 10,000
    resources these were most of the operator's memory."""
    meta = dict(obj.get("metadata") or {})
    meta.pop("managedFields", None)
    annotations = meta.get("annotations")
    if annotations and "kubectl.kubernetes.io/last-applied-configuration" in annotations:
        meta["annotations"] = {k: v for k, v in annotations.items()
                               if k != "kubectl.kubernetes.io/last-applied-configuration"}
    out = {**obj, "metadata": meta}
    if drop_spec_keys and isinstance(obj.get("spec"), dict):
        out["spec"] = {k: v for k, v in obj["spec"].items() if k not in drop_spec_keys}
    return _shared(out)


def _shared(value: Any) -> Any:
    """`value` with its keys (and short strings) interned. The JSON decoder makes new key
    strings for every object, so 20,000 cached objects held 20,000 copies of "creationTimestamp"
    and the rest; shared, the cache at 10,000 resources is a third smaller."""
    if isinstance(value, dict):
        return {sys.intern(k): _shared(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_shared(v) for v in value]
    if isinstance(value, str) and len(value) <= 40:
        return sys.intern(value)
    return value


@dataclass
class Cache:
    resources: dict[Key, dict[str, Any]] = field(default_factory=dict)
    jobs: dict[Key, dict[str, Any]] = field(default_factory=dict)
    pods: dict[Key, dict[str, dict[str, Any]]] = field(default_factory=dict)
    namespace_limits: dict[str, int] = field(default_factory=dict)
    terminating: set[str] = field(default_factory=set)
    """Namespaces being deleted: nothing new can be created in them."""
    nodes: dict[str, dict[str, Any]] = field(default_factory=dict)
    """Nodes (labels, taints, allocatable), for the admission's node-fit check."""
    gone_pods: dict[Key, dict[str, dict[str, Any]]] = field(default_factory=dict)
    """Runner pods deleted since their resource's GPU-seconds ledger was last written."""
    _specs: dict[Key, tuple[str, int | None, Any, str | None]] = field(default_factory=dict)

    def spec_of(self, key: Key) -> tuple[Any | None, str | None]:
        """The resource's validated spec model, or None and why it does not validate; parsed
        once per generation (admission passes ask for every resource)."""
        obj = self.resources.get(key)
        if obj is None:
            return None, "gone"
        uid, gen = obj["metadata"].get("uid", ""), obj["metadata"].get("generation")
        memo = self._specs.get(key)
        if memo is not None and memo[0] == uid and memo[1] == gen:
            return memo[2], memo[3]
        try:
            spec, error = kind_of(key[0]).spec_model.model_validate(obj.get("spec") or {}), None
        except (ValidationError, ValueError) as exc:
            spec, error = None, str(exc)
        self._specs[key] = (uid, gen, spec, error)
        return spec, error

    # An event carrying the very version the cache has says nothing new: the watch echo of the
    # operator's own write (whose answer was cached), or Kopf's start-up listing of what
    # `app.build` listed. The handlers skip those (no slimming, no reconcile).
    def holds_resource(self, obj: dict[str, Any]) -> bool:
        return _same_version(self.resources.get(resource_key(obj)), obj)

    def holds_job(self, obj: dict[str, Any]) -> bool:
        key = owner_key(obj)
        return key is not None and _same_version(self.jobs.get(key), obj)

    def holds_pod(self, obj: dict[str, Any]) -> bool:
        key = owner_key(obj)
        return key is not None and _same_version(self.pods.get(key, {}).get(obj["metadata"].get("uid", "")), obj)

    def put_resource(self, obj: dict[str, Any], deleted: bool = False) -> Key:
        obj = slim(obj)
        key = resource_key(obj)
        if deleted:
            self.resources.pop(key, None)
            self._specs.pop(key, None)
            self.gone_pods.pop(key, None)
        elif newer(obj, self.resources.get(key)):
            self.resources[key] = obj
        return key

    def job_of(self, key: Key) -> dict[str, Any] | None:
        """The Job of the resource now under `key`; a predecessor's Job (same name, other
        uid, still being deleted) is not it."""
        job, res = self.jobs.get(key), self.resources.get(key)
        if job is None or res is None or owner_uid(job) != res["metadata"]["uid"]:
            return None
        return job

    def pods_of(self, key: Key) -> list[dict[str, Any]]:
        """Pods of the resource now under `key` (not a same-named predecessor's)."""
        res = self.resources.get(key)
        if res is None:
            return []
        uid = res["metadata"]["uid"]
        return [p for p in self.pods.get(key, {}).values() if owner_uid(p) == uid]

    def put_job(self, obj: dict[str, Any], deleted: bool = False) -> Key | None:
        key = owner_key(obj)
        if key is None:
            return None
        obj = slim(obj, drop_spec_keys=("template", "selector", "podFailurePolicy"))
        current = self.jobs.get(key)
        if deleted:
            if current is not None and current["metadata"]["uid"] == obj["metadata"]["uid"]:
                del self.jobs[key]
        elif newer(obj, current):
            self.jobs[key] = obj
        return key

    def put_pod(self, obj: dict[str, Any], deleted: bool = False) -> Key | None:
        key = owner_key(obj)
        if key is None:
            return None
        obj = slim(obj, drop_spec_keys=("containers", "volumes", "initContainers", "tolerations", "affinity"))
        pods = self.pods.setdefault(key, {})
        if deleted:
            last = pods.pop(obj["metadata"]["uid"], None)
            if not pods:
                del self.pods[key]
            self.gone_pods.setdefault(key, {})[obj["metadata"]["uid"]] = obj if newer(obj, last) else last
        elif newer(obj, pods.get(obj["metadata"]["uid"])):
            pods[obj["metadata"]["uid"]] = obj
        return key

    def put_namespace(self, obj: dict[str, Any], deleted: bool = False) -> bool:
        """Record a namespace's GPU limit annotation (and whether it is being deleted); True
        when the limit changed."""
        name = obj["metadata"]["name"]
        if not deleted and obj["metadata"].get("deletionTimestamp"):
            self.terminating.add(name)
        else:
            self.terminating.discard(name)
        raw = (obj["metadata"].get("annotations") or {}).get(c.ANNOTATION_GPU_LIMIT)
        limit: int | None = None
        if raw is not None and not deleted:
            try:
                limit = max(0, int(raw))
            except ValueError:
                limit = None  # unparsable: treated as unset (and reported by the reconciler's log)
        old = self.namespace_limits.get(name)
        if limit is None:
            self.namespace_limits.pop(name, None)
        else:
            self.namespace_limits[name] = limit
        return old != limit

    def put_node(self, obj: dict[str, Any], deleted: bool = False) -> bool:
        """Record a node; True when what the node-fit check reads changed."""
        name = obj["metadata"]["name"]
        old = self.nodes.get(name)
        if deleted:
            self.nodes.pop(name, None)
            return old is not None
        slim_node = {"metadata": {"name": name, "labels": obj["metadata"].get("labels") or {}},
                     "spec": {k: v for k, v in (obj.get("spec") or {}).items() if k in ("taints", "unschedulable")},
                     "status": {"allocatable": (obj.get("status") or {}).get("allocatable") or {}}}
        self.nodes[name] = slim_node
        return old != slim_node
