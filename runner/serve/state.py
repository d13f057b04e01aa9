"""What the depth server holds between requests, and its one-line error answers."""

from __future__ import annotations

import asyncio
import concurrent.futures as cf
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from starlette.requests import Request
from starlette.responses import JSONResponse

from spatialforge.crds.v1alpha1.common import DepthModel
from spatialforge.runner.serve.batcher import DynamicBatcher
from spatialforge.runner.serve.config import ServeSettings
from spatialforge.runner.serve.metrics import ServeMetrics
from spatialforge.runner.settings import RunnerSettings

if TYPE_CHECKING:
    from spatialforge.runner.models.estimator import DepthEstimator
    from spatialforge.runner.serve.batches import BatchRuns


class BadRequest(Exception):
    """A request the server refuses before any work: answered `status` with `code`."""

    def __init__(self, status: int, code: str, message: str) -> None:
        super().__init__(message)
        self.status, self.code, self.message = status, code, message


@dataclass(kw_only=True)
class ServerState:
    """The loaded model and its batcher (None until loaded), the decode threads, the metrics."""

    serve: ServeSettings
    runner: RunnerSettings
    metrics: ServeMetrics = field(default_factory=ServeMetrics)
    estimator: DepthEstimator | None = None
    batcher: DynamicBatcher | None = None
    ready: bool = False
    failure: str | None = None
    pool: cf.ThreadPoolExecutor | None = None
    loader: asyncio.Task[None] | None = None
    batch_runs: BatchRuns | None = None

    @property
    def model(self) -> DepthModel:
        """The checkpoint this server serves."""
        return DepthModel(size=self.serve.model_size, variant=self.serve.model_variant)

    def load_model(self) -> DepthEstimator:
        from spatialforge.runner.models.estimator import DepthEstimator

        return DepthEstimator.load(self.model, settings=self.runner)


def state_of(request: Request) -> ServerState:
    state: ServerState = request.app.state.sf
    return state


def error(status: int, code: str, message: str, *, retry_after: int | None = None) -> JSONResponse:
    """The server's error answer: {"error": code, "message": ...}, Retry-After when given."""
    headers = {"Retry-After": str(retry_after)} if retry_after is not None else None
    return JSONResponse({"error": code, "message": message}, status_code=status, headers=headers)


def not_ready(state: ServerState) -> JSONResponse:
    """503 while the model loads (Retry-After 1), or with the reason it could not load."""
    if state.failure:
        return error(503, "load_failed", state.failure)
    return error(503, "not_ready", "the model is loading", retry_after=1)
