"""POST /v1/batches: a small DepthBatch the operator hands to this warm server (operator/handoff.py).

It runs with the batch runner's own stage (same decoding, outputs, manifest) and this server's
loaded model, one shard, its outputs staged under the hand-off's attempt id. Each attempt runs
at most once per server: a second POST of the same attempt (an operator restarted while the
first was in flight) waits for the first run and gets its answer. Finished answers are kept
for KEEP_SECONDS (at most KEEP_MAX of them).
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections import OrderedDict
from dataclasses import dataclass, field

from pydantic import ValidationError
from starlette.requests import Request
from starlette.responses import JSONResponse, Response

from spatialforge.crds.constants import EXIT_INVALID_INPUT
from spatialforge.crds.pool import BatchHandOff, BatchRunError, BatchRunResult
from spatialforge.runner.errors import RunnerError, exit_code_for, reason_for
from spatialforge.runner.serve.state import ServerState, error, not_ready, state_of

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

    def run(self, state: ServerState, req: BatchHandOff) -> asyncio.Task[tuple[int, dict[str, object]]]:
        self._expire()
        task = self.runs.get(req.attempt)
        if task is None:
            self.started += 1
            task = asyncio.get_running_loop().create_task(_run(state, req), name=f"sf-batch-{req.attempt}")
            task.add_done_callback(lambda _t, a=req.attempt: self.finished_at.__setitem__(a, time.monotonic()))
            self.runs[req.attempt] = task
        else:
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
    status, body = await asyncio.shield(state.batch_runs.run(state, req))  # a dropped client never stops it
    return JSONResponse(body, status_code=status)


async def _run(state: ServerState, req: BatchHandOff) -> tuple[int, dict[str, object]]:
    from spatialforge.runner.stages.base import RunContext
    from spatialforge.runner.stages.depth import DepthStage

    ctx = RunContext(namespace=req.namespace, name=req.name, settings=state.runner, attempt=req.attempt,
                     estimator_loader=lambda *_a, **_k: state.estimator)
    t0 = time.monotonic()
    try:
        result = await asyncio.to_thread(DepthStage().run, req.spec, ctx)
    except Exception as exc:  # noqa: BLE001 - the operator gets the runner's exit code and reason
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
