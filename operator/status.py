"""Conditions and the status patch: computed in full, written only when something changed."""

from __future__ import annotations

import datetime as dt
from typing import Any

from spatialforge.crds.v1alpha1 import ResourceStatus
from spatialforge.crds.v1alpha1.common import CRDModel

# Status keys the operator owns (all but the runners' `progress.shards`): a key the derived
# status leaves out is removed, so a field written by anyone else does not survive a reconcile.
OWNED = frozenset(f.alias or name for name, f in ResourceStatus.model_fields.items())


def now_iso() -> str:
    return dt.datetime.now(dt.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def set_condition(conditions: list[dict[str, Any]], type_: str, status: str, reason: str, message: str,
                  generation: int | None, *, now: str | None = None) -> list[dict[str, Any]]:
    """Return conditions with one set; lastTransitionTime moves only when status changes."""
    out = [dict(c) for c in conditions if c.get("type") != type_]
    old = next((c for c in conditions if c.get("type") == type_), None)
    transition = old["lastTransitionTime"] if old and old.get("status") == status and old.get(
        "lastTransitionTime") else (now or now_iso())
    out.append({"type": type_, "status": status, "reason": reason, "message": message[:32000],
                "lastTransitionTime": transition, "observedGeneration": generation})
    return sorted(out, key=lambda c: c["type"])


def dump(status: ResourceStatus) -> dict[str, Any]:
    """The status as written: by alias, without empty fields, without the runners' shards."""
    return status.model_dump(mode="json", by_alias=True, exclude_none=True, exclude={"progress": {"shards"}})


def diff(current: dict[str, Any], desired: dict[str, Any]) -> dict[str, Any]:
    """The merge patch that turns `current` into `desired` for the keys desired names
    (None deletes). Nested dicts are compared recursively; lists as a whole."""
    patch: dict[str, Any] = {}
    for key, want in desired.items():
        have = current.get(key)
        if isinstance(want, dict) and isinstance(have, dict):
            sub = diff(have, want)
            if sub:
                patch[key] = sub
        elif want != have and not (want is None and key not in current):
            patch[key] = want
    return patch


def patch_for(current: dict[str, Any], desired: ResourceStatus) -> dict[str, Any]:
    """Merge patch from the stored status to the derived one; owned keys it lacks are removed."""
    want: dict[str, Any] = dict.fromkeys((k for k in current if k in OWNED and k != "progress"), None)
    want.update(dump(desired))
    return diff(current, want)


def model_patch(current: dict[str, Any], desired: CRDModel) -> dict[str, Any]:
    """Merge patch from a stored status to a typed one (by alias, every field it has: a field
    set to None is removed)."""
    want = desired.model_dump(mode="json", by_alias=True, exclude_none=True)
    for name, f in type(desired).model_fields.items():
        want.setdefault(f.alias or name, None)
    return diff(current, want)
