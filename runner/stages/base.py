"""The Stage interface (one implementation per kind) and what every stage is given."""

from __future__ import annotations

import datetime as dt
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Protocol

from spatialforge.crds import layout
from spatialforge.crds.constants import API_VERSION
from spatialforge.crds.v1alpha1.common import DepthModel
from spatialforge.runner.devices import DeviceChoice, choose_device
from spatialforge.runner.progress import Progress
from spatialforge.runner.settings import RunnerSettings
from spatialforge.runner.storage import ArtifactStore, open_store
from spatialforge.runner.storage.staging import Publisher


@dataclass(kw_only=True)
class StageResult:
    """What a finished shard produced."""

    manifest_uri: str
    items: int
    seconds: float
    summary: dict[str, Any] = field(default_factory=dict)


@dataclass(kw_only=True)
class RunContext:
    """Identity of the run, its shard, its settings, and the shared resources (stores, model, device).

    `settings` (read once by the entry point) reach everything the run opens: object stores,
    device, weights, termination log.
    """

    namespace: str
    name: str
    shard_index: int = 0
    shard_count: int = 1
    progress: Progress = field(default_factory=Progress)
    settings: RunnerSettings
    device: DeviceChoice | None = None
    estimator_loader: Callable[..., Any] | None = None
    attempt: str = field(default_factory=lambda: uuid.uuid4().hex[:12])
    """This run's id: outputs are staged under it and published at the end (storage/staging.py)."""
    publisher: Publisher | None = None
    """Who this run publishes as, behind the publish fence (storage/staging.py); None (a local
    run) publishes without one."""
    _stores: dict[str, ArtifactStore] = field(default_factory=dict, repr=False)
    _estimators: dict[str, Any] = field(default_factory=dict, repr=False)

    def store(self, uri: str) -> ArtifactStore:
        """One store per scheme, created on first use."""
        scheme = uri.split("://", 1)[0]
        if scheme not in self._stores:
            self._stores[scheme] = open_store(uri, self.settings)
        return self._stores[scheme]

    def use_store(self, scheme: str, store: ArtifactStore) -> None:
        """Inject a store (tests use MemoryStore)."""
        self._stores[scheme] = store

    def get_device(self) -> DeviceChoice:
        if self.device is None:
            self.device = choose_device(self.settings.device, fp16=self.settings.fp16)
        return self.device

    def estimator(self, model: DepthModel) -> Any:
        """The depth estimator for a model, loaded once per process (per context)."""
        key = f"{model.size}/{model.variant}"
        if key not in self._estimators:
            if self.estimator_loader is not None:
                loader = self.estimator_loader
            else:
                from spatialforge.runner.models.estimator import DepthEstimator

                loader = DepthEstimator.load
            self._estimators[key] = loader(model, device=self.get_device(), settings=self.settings)
        return self._estimators[key]

    def shard_prefix(self, output_uri: str) -> str:
        return layout.shard_prefix(output_uri, self.namespace, self.name, self.shard_index)

    def staging_prefix(self, output_uri: str) -> str:
        return layout.staging_prefix(output_uri, self.namespace, self.name, self.shard_index)

    def claim_uri(self, output_uri: str) -> str | None:
        """The shard's publish fence, when this run publishes behind one."""
        if self.publisher is None:
            return None
        return layout.claim_uri(output_uri, self.namespace, self.name, self.publisher.uid, self.shard_index)

    def manifest_uri(self, output_uri: str) -> str:
        return layout.manifest_uri(output_uri, self.namespace, self.name, self.shard_index)

    def close(self) -> None:
        for store in self._stores.values():
            store.close()
        self._stores.clear()


class Stage(Protocol):
    """Runs one shard of one kind's spec; raises RunnerError subclasses on failure."""

    kind: str

    def run(self, spec: Any, ctx: RunContext) -> StageResult: ...


def manifest_header(kind: str, ctx: RunContext) -> dict[str, Any]:
    """The fields every shard manifest starts with, whatever the kind."""
    return {
        "apiVersion": API_VERSION,
        "kind": kind,
        "namespace": ctx.namespace,
        "name": ctx.name,
        "shard": {"index": ctx.shard_index, "count": ctx.shard_count},
        "createdAt": dt.datetime.now(dt.timezone.utc).isoformat(),
    }
