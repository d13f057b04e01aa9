"""Conditions and status: computed in full, written only when something changed."""

from __future__ import annotations

import datetime as dt
from typing import Any


def now_iso() -> str:
    return dt.datetime.now(dt.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def set_condition(conditions: list[dict[str, Any]], type_: str, status: str, reason: str, message: str,
                  generation: int | None) -> list[dict[str, Any]]:
    """Return conditions with one set; lastTransitionTime moves only when status changes."""
    out = [dict(c) for c in conditions if c.get("type") != type_]
    old = next((c for c in conditions if c.get("type") == type_), None)
    transition = old["lastTransitionTime"] if old and old.get("status") == status else now_iso()
    out.append({"type": type_, "status": status, "reason": reason, "message": message[:32000],
                "lastTransitionTime": transition, "observedGeneration": generation})
    return sorted(out, key=lambda c: c["type"])


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
