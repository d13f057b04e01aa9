"""What the agent does with a pod: rules from a ConfigMap, so tests can steer it live.

ConfigMap `behaviour` in namespace `spatialforge-devcluster`; each value is JSON. Keys, most
specific first: `<namespace>_<resource name>`, `<namespace>`, `_default`. (`_` cannot occur
in Kubernetes names, so the keys never collide.) The resource name is the pod's
`spatialforge.io/name` label, else its Job's name.
"""

from __future__ import annotations

import json
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field
from pydantic.alias_generators import to_camel

NAMESPACE = "spatialforge-devcluster"
CONFIGMAP = "behaviour"
DEFAULT_KEY = "_default"


class Behaviour(BaseModel):
    """How to play one pod."""

    model_config = ConfigDict(alias_generator=to_camel, populate_by_name=True, extra="forbid")

    mode: Literal["simulate", "process"] = "simulate"
    seconds: float = Field(default=1.0, ge=0)
    """Simulated run time."""
    exit_code: int = 0
    exit_codes: list[int] | None = None
    """Exit code per attempt (the last one repeats); overrides exit_code."""
    message: str = ""
    """Termination message of a simulated container."""
    waiting_reason: str | None = None
    """Leave the container waiting with this reason (e.g. ImagePullBackOff); never start it."""

    def exit_code_for(self, attempt: int) -> int:
        if self.exit_codes:
            return self.exit_codes[min(attempt, len(self.exit_codes) - 1)]
        return self.exit_code


def resolve(data: dict[str, str] | None, namespace: str, name: str | None, fallback: Behaviour) -> Behaviour:
    """Pick the most specific rule for a pod."""
    data = data or {}
    keys = ([f"{namespace}_{name}"] if name else []) + [namespace, DEFAULT_KEY]
    for key in keys:
        if key in data:
            return Behaviour.model_validate(json.loads(data[key]))
    return fallback


def rule(**fields: Any) -> str:
    """A ConfigMap value for a rule (helper for tests and scripts)."""
    return Behaviour.model_validate(fields).model_dump_json(by_alias=True, exclude_defaults=True)
