"""Wiring: resource -> validated spec -> stage -> exit code. Used by the pod and `spatialforge run`."""

from __future__ import annotations

import asyncio
import logging
import os
import sys
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TextIO

import yaml
from pydantic import ValidationError

from spatialforge.crds.constants import ENV_RESOURCE_KIND, ENV_RESOURCE_NAME, ENV_RESOURCE_NAMESPACE, ENV_SHARD_INDEX
from spatialforge.crds.kinds import BY_KIND, DEPTH_BATCH, RECONSTRUCTION_JOB
from spatialforge.crds.v1alpha1.common import ALLOW_LOCAL_FILES
from spatialforge.crds.v1alpha1.depthbatch import DepthBatch
from spatialforge.crds.v1alpha1.reconstructionjob import ReconstructionJob
from spatialforge.runner.errors import EXIT_OK, InvalidSpecError, RunnerError, exit_code_for, reason_for
from spatialforge.runner.progress import Progress, TerminalBar
from spatialforge.runner.settings import RunnerSettings, env_names, termination_path
from spatialforge.runner.stages.base import RunContext, Stage, StageResult
from spatialforge.runner.storage.staging import Publisher
from spatialforge.runner.termination import write_termination_message

log = logging.getLogger("spatialforge.runner")
RESOURCES = BY_KIND
JOB_FENCE_WAIT_SECONDS = 300.0
"""How long a Job fenced out by a pool hand-off that claimed the results first waits for that
hand-off's manifest (its publish was under way) before failing (retryable)."""


def stage_for(kind: str) -> Stage:
    """The stage implementing a kind (imported lazily: torch and open3d are heavy)."""
    if kind == DEPTH_BATCH.kind:
        from spatialforge.runner.stages.depth import DepthStage

        return DepthStage()
    if kind == RECONSTRUCTION_JOB.kind:
        from spatialforge.runner.stages.reconstruct import ReconstructStage

        return ReconstructStage()
    raise InvalidSpecError(f"unknown kind {kind!r} (expected one of {', '.join(RESOURCES)})")


def parse_resource(data: Any, *, allow_local: bool = False, kind: str | None = None) -> DepthBatch | ReconstructionJob:
    """Validate a resource dict with its pydantic model; any problem is InvalidSpecError."""
    if not isinstance(data, dict):
        raise InvalidSpecError("the manifest is not a mapping")
    kind = kind or str(data.get("kind", ""))
    entry = RESOURCES.get(kind)
    if entry is None:
        raise InvalidSpecError(f"unknown kind {kind!r} (expected one of {', '.join(RESOURCES)})")
    try:
        return entry.model.model_validate(data, context={ALLOW_LOCAL_FILES: allow_local})  # type: ignore[return-value]
    except ValidationError as exc:
        first = exc.errors()[0]
        where = ".".join(str(p) for p in first.get("loc", ()))
        raise InvalidSpecError(f"invalid {kind} spec: {where}: {first.get('msg')} ({exc.error_count()} error(s))") from exc


def shard_count(resource: DepthBatch | ReconstructionJob) -> int:
    return resource.spec.shards


@dataclass(kw_only=True)
class RunOutcome:
    """How a run ended: exit code, one-line reason on failure, results of finished shards."""

    exit_code: int
    reason: str = ""
    results: list[StageResult] = field(default_factory=list)
    seconds: float = 0.0

    @property
    def ok(self) -> bool:
        return self.exit_code == EXIT_OK


def fail(exc: BaseException, env: Mapping[str, str], results: list[StageResult] | None = None) -> RunOutcome:
    """Map an exception to an outcome and leave the termination message."""
    code, reason = exit_code_for(exc), reason_for(exc)
    if isinstance(exc, RunnerError):
        log.error("run failed (exit %d): %s", code, reason)
    else:
        log.exception("run failed (exit %d, retryable)", code, exc_info=exc)
    write_termination_message(reason, termination_path(env))
    return RunOutcome(exit_code=code, reason=reason, results=results or [])


def load_settings(env: Mapping[str, str]) -> RunnerSettings:
    """RunnerSettings from `env`; a bad value is invalid input naming the variable."""
    try:
        return RunnerSettings.from_env(env)
    except ValidationError as exc:
        first = exc.errors()[0]
        field_name = str(first.get("loc", ("?",))[0])
        names = env_names(field_name) if field_name in RunnerSettings.model_fields else [field_name]
        raise InvalidSpecError(f"runner environment: {names[0]}: {first.get('msg')}") from exc


# --- local -----------------------------------------------------------------------------------


def _absolutise(uri: Any, base: Path) -> Any:
    """file://relative/path -> file:///abs/path, relative to the manifest's folder.

    A local run reads and writes wherever the user's own account may: absolute file:///paths
    anywhere (the spec model refuses '.'/'..' segments). A host (file://localhost/...,
    file://user@host/..., file://host:port/..., UNC file:////server/share) is refused.
    """
    if not isinstance(uri, str) or not uri.startswith("file://"):
        return uri
    rest = uri[len("file://") :]
    first = rest.split("/", 1)[0]
    if rest.startswith("//") or first.lower() == "localhost" or "@" in first or ":" in first:
        raise InvalidSpecError(f"file:// URI with a host is not supported (local paths only): {uri[:200]}")
    if rest.startswith("/"):
        return uri
    trailing = "/" if rest.endswith("/") else ""
    return (base / rest).resolve().as_uri() + trailing


def _localise(data: dict[str, Any], base: Path) -> dict[str, Any]:
    spec = data.get("spec")
    if isinstance(spec, dict):
        if isinstance(spec.get("inputs"), list):
            spec["inputs"] = [_absolutise(u, base) for u in spec["inputs"]]
        if "input" in spec:
            spec["input"] = _absolutise(spec["input"], base)
        if isinstance(spec.get("output"), dict) and "uri" in spec["output"]:
            spec["output"]["uri"] = _absolutise(spec["output"]["uri"], base)
    return data


def run_local(
    manifest_path: str | os.PathLike[str],
    *,
    shard_index: int | None = None,
    env: Mapping[str, str] | None = None,
    progress_stream: TextIO | None = None,
    show_progress: bool = True,
    ctx: RunContext | None = None,
) -> RunOutcome:
    """Run a DepthBatch / ReconstructionJob manifest on this machine.

    file:// URIs (absolute, or relative to the manifest's folder) and s3:// are allowed.
    Runs every shard in turn with one loaded model (or only `shard_index`). Never raises for
    a failed run: the outcome carries the exit code (0, EXIT_INVALID_INPUT, or 1).
    """
    env = dict(os.environ if env is None else env)
    started = time.monotonic()
    results: list[StageResult] = []
    try:
        settings = load_settings(env)  # a bad variable is invalid input before anything else
        path = Path(manifest_path)
        try:
            docs = [d for d in yaml.safe_load_all(path.read_text()) if d]
        except (OSError, yaml.YAMLError) as exc:
            raise InvalidSpecError(f"cannot read manifest {path}: {exc}") from exc
        if not docs:
            raise InvalidSpecError(f"manifest {path} is empty")
        resource = parse_resource(_localise(docs[0], path.resolve().parent), allow_local=True)
        count = shard_count(resource)
        shards = range(count) if shard_index is None else [shard_index]
        if shard_index is not None and not 0 <= shard_index < count:
            raise InvalidSpecError(f"shard index {shard_index} out of range for parallelism {count}")
        stage = stage_for(resource.kind)
        meta = resource.metadata or {}
        base_ctx = ctx or RunContext(namespace=str(meta.get("namespace") or "default"), name=str(meta.get("name") or path.stem), settings=settings)
        base_ctx.namespace = str(meta.get("namespace") or base_ctx.namespace)
        base_ctx.name = str(meta.get("name") or base_ctx.name)
        base_ctx.shard_count = count
        try:
            for index in shards:
                base_ctx.shard_index = index
                base_ctx.progress = Progress()
                bar = None
                if show_progress:
                    label = f"{resource.kind} {base_ctx.name} shard {index + 1}/{count} " if count > 1 else f"{resource.kind} {base_ctx.name} "
                    bar = TerminalBar(stream=progress_stream or sys.stderr, label=label)
                    base_ctx.progress.subscribe(bar)
                try:
                    results.append(stage.run(resource.spec, base_ctx))
                finally:
                    if bar is not None:
                        bar.close()
        finally:
            if ctx is None:
                base_ctx.close()
    except Exception as exc:  # noqa: BLE001 - every failure becomes an exit code
        out = fail(exc, env, results)
        out.seconds = time.monotonic() - started
        return out
    return RunOutcome(exit_code=EXIT_OK, results=results, seconds=time.monotonic() - started)


# --- in a pod --------------------------------------------------------------------------------


def pod_identity(settings: RunnerSettings) -> tuple[str, str, str]:
    """(kind, name, namespace) the operator gave this pod; missing ones are invalid input."""
    values = {ENV_RESOURCE_KIND: settings.kind, ENV_RESOURCE_NAME: settings.name, ENV_RESOURCE_NAMESPACE: settings.namespace}
    missing = [k for k, v in values.items() if not v]
    if missing:
        raise InvalidSpecError(f"runner environment lacks {', '.join(missing)}")
    kind, name, namespace = (str(v) for v in values.values())
    if kind not in RESOURCES:
        raise InvalidSpecError(f"unknown {ENV_RESOURCE_KIND} {kind!r}")
    return kind, name, namespace


async def run_in_pod(env: Mapping[str, str] | None = None, *, ctx: RunContext | None = None) -> RunOutcome:
    """GET our resource, validate it, run our shard, patch progress; never raises."""
    env = dict(os.environ if env is None else env)
    started = time.monotonic()
    try:
        settings = load_settings(env)
        kind, name, namespace = pod_identity(settings)
        from kubernetes_asyncio import client

        from spatialforge.runner.kube import ProgressPatcher, ResourceClient, load_config

        await load_config(settings.kubeconfig)
        async with client.ApiClient() as api:
            rc = ResourceClient(api, plural=RESOURCES[kind].plural, namespace=namespace, name=name)
            raw = await rc.get()
            resource = parse_resource(raw, kind=kind)
            count = shard_count(resource)
            if not 0 <= settings.shard_index < count:
                raise InvalidSpecError(f"{ENV_SHARD_INDEX}={settings.shard_index} out of range for parallelism {count}")
            run_ctx = ctx or RunContext(namespace=namespace, name=name, settings=settings)
            run_ctx.shard_index, run_ctx.shard_count = settings.shard_index, count
            if run_ctx.publisher is None and (raw.get("metadata") or {}).get("uid"):
                # every pod of the Job publishes as "job": a retry may finish a publish cut
                # short, a pool hand-off of the same resource may not (storage/staging.py)
                run_ctx.publisher = Publisher(uid=raw["metadata"]["uid"], name="job", wait_seconds=JOB_FENCE_WAIT_SECONDS)
            patcher = ProgressPatcher(rc, run_ctx.progress, settings.shard_index, interval=settings.progress_interval)
            patcher.start()
            stage = stage_for(kind)
            try:
                result = await asyncio.to_thread(stage.run, resource.spec, run_ctx)
            except BaseException:
                run_ctx.progress.update(stage="failed")  # the final patch tells the operator
                raise
            finally:
                await patcher.close()
                if ctx is None:
                    run_ctx.close()
        log.info("done: %d item(s), manifest %s", result.items, result.manifest_uri)
        return RunOutcome(exit_code=EXIT_OK, results=[result], seconds=time.monotonic() - started)
    except Exception as exc:  # noqa: BLE001
        out = fail(exc, env)
        out.seconds = time.monotonic() - started
        return out
