"""DepthPool rules both sides use: the operator that makes a pool's Service and hands batches
to it, the front end that balances over the Service's endpoints, and the server itself.

    service_name          the Service (and Deployment) of a pool, cut to a DNS label (63)
    ready_urls            the ready endpoints of the Service's EndpointSlices
    SERVE_ENV_PREFIX      the depth server's settings (runner/serve/config.py reads them)
    BatchHandOff / BatchRunResult / BatchRunError    POST /v1/batches, request and answers
    HandOffRecord         a DepthBatch's hand-off, kept in an annotation the operator writes
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any, Final

from pydantic import Field

from spatialforge.crds.constants import GROUP
from spatialforge.crds.v1alpha1.common import CRDModel
from spatialforge.crds.v1alpha1.depthbatch import DepthBatchSpec

SERVICE_PREFIX: Final = "spatialforge-pool-"
SERVICE_LABEL: Final = "kubernetes.io/service-name"  # on every EndpointSlice of a Service
PORT_NAME: Final = "http"
PORT: Final = 8080
LABEL_POOL: Final = f"{GROUP}/pool"
SERVE_ENV_PREFIX: Final = "SPATIALFORGE_SERVE_"
BATCHES_PATH: Final = "/v1/batches"
ATTEMPT_PATTERN: Final = r"^[a-z0-9][a-z0-9-]{0,62}$"
ANNOTATION_HAND_OFF: Final = f"{GROUP}/pool-hand-off"


def service_name(pool: str) -> str:
    """The Service's and the Deployment's name (a Service name is a DNS label: 63 at most)."""
    return f"{SERVICE_PREFIX}{pool}"[:63].rstrip("-")


def serve_env(setting: str) -> str:
    """The env variable of one depth-server setting (`max_batch` -> SPATIALFORGE_SERVE_MAX_BATCH)."""
    return SERVE_ENV_PREFIX + setting.upper()


def _get(obj: Any, key: str) -> Any:
    """`key` of an API object given as a dict (camelCase) or a kubernetes client model."""
    if isinstance(obj, dict):
        return obj.get(key)
    return getattr(obj, key, None)


def endpoint_ready(endpoint: Any) -> bool:
    """The API's rule: ready unless `conditions.ready` is false (nil reads as ready), and not
    terminating."""
    conditions = _get(endpoint, "conditions")
    if conditions is None:
        return True
    return _get(conditions, "ready") is not False and _get(conditions, "terminating") is not True


def ready_urls(slices: Iterable[Any]) -> list[str]:
    """http://address:port of every ready endpoint of a Service's EndpointSlices (dicts or
    kubernetes models), the port being the slice's `http` port; sorted, no duplicates."""
    out: set[str] = set()
    for s in slices:
        port = next((_get(p, "port") for p in _get(s, "ports") or [] if _get(p, "name") == PORT_NAME), None)
        if not port:
            continue
        for ep in _get(s, "endpoints") or []:
            if endpoint_ready(ep):
                out.update(f"http://{f'[{a}]' if ':' in a else a}:{port}" for a in _get(ep, "addresses") or [])
    return sorted(out)


class BatchHandOff(CRDModel):
    """POST /v1/batches: a one-shard DepthBatch the operator hands to a pool replica."""

    namespace: str = Field(min_length=1, max_length=63)
    name: str = Field(min_length=1, max_length=253)
    attempt: str = Field(pattern=ATTEMPT_PATTERN)
    """This hand-off's id, recorded on the resource before the POST: a second POST of the same
    attempt (an operator restarted meanwhile) gets the first one's answer, never a second run,
    and the outputs are staged under it."""
    spec: DepthBatchSpec
    uid: str | None = Field(default=None, max_length=128)
    """The DepthBatch's uid: the server publishes behind the batch's publish fence as
    `pool/<attempt>` (runner/storage/staging.py), so that of this attempt and the Job that may
    replace it only one ever publishes. Without it (an older operator) there is no fence."""
    resumed: bool = False
    """Posted again by an operator restarted mid-hand-off. A server that does not remember the
    attempt (it was restarted too) answers from the batch's manifest when one is written, and
    runs it only when none is."""
    deadline: float | None = Field(default=None, gt=0)
    """When the operator stops waiting (Unix seconds): a server that gets the request later (a
    replica paused past the operator's timeout, then resumed) must not start the run, and a run
    still going then must not claim the results (it answers 410), since the batch runs as a Job
    by then."""


class BatchRunResult(CRDModel):
    """200: the batch ran; its manifest and outputs are written."""

    manifest_uri: str
    items: int = Field(ge=0)
    seconds: float = Field(ge=0)
    summary: dict[str, Any] = Field(default_factory=dict)


class BatchRunError(CRDModel):
    """Every other answer: `error` a code, `exitCode` the runner's when the run failed."""

    error: str
    message: str = ""
    exit_code: int | None = None


class HandOffRecord(CRDModel):
    """A DepthBatch's hand-off to a pool (annotation `spatialforge.io/pool-hand-off`), written
    before the POST: an operator that finds one without an outcome and without `failed`
    (it was restarted mid-hand-off) posts the same attempt again instead of starting another
    run; one with `failed` runs as a Job and is never handed off again."""

    attempt: str = Field(pattern=ATTEMPT_PATTERN)
    pool: str
    """<namespace>/<name> of the pool."""
    url: str
    """The replica the batch was posted to (the attempt is remembered there)."""
    started: str
    failed: str | None = None
    """Why the hand-off failed (5xx, timeout, unreachable); the batch then runs as a Job."""

    @classmethod
    def of(cls, obj: dict[str, Any]) -> HandOffRecord | None:
        """The record on a resource dict, or None (also when unreadable: never handed off again)."""
        raw = ((obj.get("metadata") or {}).get("annotations") or {}).get(ANNOTATION_HAND_OFF)
        if not raw:
            return None
        try:
            return cls.model_validate_json(raw)
        except ValueError:
            return cls(attempt="unreadable", pool="?", url="?", started="", failed="unreadable hand-off record")

    def dumps(self) -> str:
        return self.model_dump_json(by_alias=True, exclude_none=True)
