"""POST /v1/batches: a small DepthBatch the operator hands to this warm server (operator/handoff.py).

It runs with the batch runner's own stage (same decoding, outputs, manifest) and this server's
loaded model, one shard, its outputs staged under the hand-off's attempt id. An attempt that
arrives after its deadline (the operator has given up: a Job runs the batch) is not started
(410). Each attempt runs at most once per server: a second POST of the same attempt (an operator restarted while the
first was in flight) waits for the first run and gets its answer. Finished answers are kept
for KEEP_SECONDS (at most KEEP_MAX of them). A resumed attempt this server does not remember
(it restarted meanwhile) is answered from the batch's manifest when that is written.

Publishing is fenced (runner/storage/staging.py): the run publishes as `pool/<attempt>` behind
the batch's claim, and not after the deadline. One that finds the claim held by the batch's Job
answers 409 `fenced`, one past its deadline 410 `expired`; neither wrote a result.
"""

from __future__ import annotations

import asyncio
import json
import logging
import time
from collections import OrderedDict
from dataclasses import dataclass, field

from pydantic import ValidationError
from starlette.requests import Request
from starlette.responses import JSONResponse, Response

from spatialforge.crds.constants import EXIT_INVALID_INPUT
from spatialforge.crds.layout import manifest_uri
from spatialforge.crds.pool import BatchHandOff, BatchRunError, BatchRunResult
from spatialforge.crds.v1alpha1.depthbatch import DepthBatchSpec
from spatialforge.runner.errors import RunnerError, exit_code_for, reason_for
from spatialforge.runner.serve.state import ServerState, error, not_ready, state_of
from spatialforge.runner.stages.base import RunContext
from spatialforge.runner.storage.staging import Publisher, PublishFenced

log = logging.getLogger("spatialforge.runner.serve.app")
KEEP_SECONDS = 3600.0
KEEP_MAX = 1024


@dataclass
class BatchRuns:
    """Runs by attempt id: in flight, or finished with their answer (status, body)."""

    runs: OrderedDict[str, asyncio.Task[tuple[int, dict[str, object]]]] = field(default_factory=OrderedDict)
    finished_at: dict[str, float] = field(default_factory=dict)
    started: int = 0
    """Runs started (a repeated attempt does not count): what a test reads to see 'once'."""

    def run(self, state: ServerState, req: BatchHandOff) -> asyncio.Task[tuple[int, dict[str, object]]] | None:
        """The attempt's run (started now, or the earlier one); None when it arrived past its
        deadline and was never started."""
        self._expire()
        task = self.runs.get(req.attempt)
        if task is None:
            if req.deadline is not None and time.time() > req.deadline:
                state.metrics.batch_runs.labels("expired").inc()
                return None
            self.started += 1
            state.metrics.batch_runs.labels("started").inc()
            task = asyncio.get_running_loop().create_task(_run(state, req), name=f"sf-batch-{req.attempt}")
            task.add_done_callback(lambda _t, a=req.attempt: self.finished_at.__setitem__(a, time.monotonic()))
            self.runs[req.attempt] = task
        else:
            state.metrics.batch_runs.labels("repeated").inc()
            log.info("hand-off attempt %s of %s/%s posted again: answering from the first", req.attempt,
                     req.namespace, req.name)
        return task

    def _expire(self) -> None:
        now = time.monotonic()
        for attempt in [a for a, t in self.finished_at.items() if now - t > KEEP_SECONDS]:
            self.runs.pop(attempt, None)
            self.finished_at.pop(attempt, None)
        while len(self.finished_at) > KEEP_MAX:
            attempt = next(a for a in self.runs if a in self.finished_at)
            self.runs.pop(attempt)
            self.finished_at.pop(attempt)


async def batches(request: Request) -> Response:
    """Run (or join the run of) one handed-off batch; the operator writes the status from the answer."""
    state = state_of(request)
    if not state.ready or state.estimator is None:
        return not_ready(state)
    try:
        req = BatchHandOff.model_validate_json(await request.body())
    except ValidationError as exc:
        return error(400, "bad_request", " ".join(f"not a batch hand-off: {exc}".split())[:1024])
    if req.spec.model != state.model or req.spec.shards != 1:
        return error(409, "wrong_pool", f"this server runs {state.model.size.value}/{state.model.variant.value} "
                                        "and takes one-shard batches only")
    if state.batch_runs is None:
        state.batch_runs = BatchRuns()
    task = state.batch_runs.run(state, req)
    if task is None:
        return error(410, "expired", f"hand-off attempt {req.attempt} arrived after its deadline; not run")
    status, body = await asyncio.shield(task)  # a dropped client never stops it
    return JSONResponse(body, status_code=status)


def _written(ctx: RunContext, spec: DepthBatchSpec) -> BatchRunResult | None:
    """The batch's result when its manifest is already written (by an earlier run of this
    attempt on a server that has since restarted), else None."""
    uri = manifest_uri(spec.output.uri, ctx.namespace, ctx.name, 0)
    store = ctx.store(uri)
    if not store.exists(uri):
        return None
    manifest = json.loads(store.get(uri))
    summary = manifest.get("summary") or {}
    return BatchRunResult(manifest_uri=uri, items=len(manifest.get("images") or []),
                          seconds=float(summary.get("seconds") or 0), summary=summary)


async def _run(state: ServerState, req: BatchHandOff) -> tuple[int, dict[str, object]]:
    from spatialforge.runner.stages.depth import DepthStage

    publisher = Publisher(uid=req.uid, name=f"pool/{req.attempt}", deadline=req.deadline) if req.uid else None
    ctx = RunContext(namespace=req.namespace, name=req.name, settings=state.runner, attempt=req.attempt,
                     estimator_loader=lambda *_a, **_k: state.estimator, publisher=publisher)
    t0 = time.monotonic()
    try:
        if req.resumed:
            written = await asyncio.to_thread(_written, ctx, req.spec)
            if written is not None:
                state.metrics.batch_runs.labels("recovered").inc()
                log.info("hand-off attempt %s of %s/%s is already written: answering from its manifest",
                         req.attempt, req.namespace, req.name)
                return 200, written.model_dump(mode="json", by_alias=True)
        result = await asyncio.to_thread(DepthStage().run, req.spec, ctx)
    except PublishFenced as fenced:
        state.metrics.batch_runs.labels("fenced").inc()
        log.warning("hand-off attempt %s of %s/%s published nothing: %s", req.attempt, req.namespace, req.name, fenced)
        status, code = (409, "fenced") if fenced.holder else (410, "expired")
        return status, BatchRunError(error=code, message=str(fenced)).model_dump(mode="json", by_alias=True)
    except Exception as exc:
        code = exit_code_for(exc)
        if not isinstance(exc, RunnerError):
            log.exception("handed-off batch %s/%s failed", req.namespace, req.name)
        answer = BatchRunError(error="run_failed", exit_code=code, message=reason_for(exc))
        return (422 if code == EXIT_INVALID_INPUT else 500), answer.model_dump(mode="json", by_alias=True)
    finally:
        ctx.close()
    ok = BatchRunResult(manifest_uri=result.manifest_uri, items=result.items,
                        seconds=round(time.monotonic() - t0, 4), summary=result.summary)
    return 200, ok.model_dump(mode="json", by_alias=True)
