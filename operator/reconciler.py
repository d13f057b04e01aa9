"""Reconcile each resource from the cache: admission, the child Job, fail-fast, status.

Kopf's event handlers only feed the cache and enqueue keys; a fixed pool of workers takes
keys from one de-duplicating queue, so each resource is reconciled by one worker at a time
and every decision is recomputed from current state (idempotent by construction).
"""

from __future__ import annotations

import asyncio
import datetime as dt
import logging
import time
from typing import Any

from pydantic import ValidationError

from spatialforge.crds import constants as c
from spatialforge.crds import layout
from spatialforge.crds.v1alpha1 import DepthBatch, ReconstructionJob
from spatialforge.crds.v1alpha1 import conditions as cond
from spatialforge.operator import admission, children, metrics
from spatialforge.operator.cache import Cache, Key
from spatialforge.operator.kube import AlreadyExists, ConflictError, Kube, NotFound
from spatialforge.operator.settings import OperatorSettings
from spatialforge.operator.status import diff, now_iso, set_condition

log = logging.getLogger(__name__)
MODELS: dict[str, type[DepthBatch] | type[ReconstructionJob]] = {
    "DepthBatch": DepthBatch, "ReconstructionJob": ReconstructionJob}
TERMINAL = {"Succeeded", "Failed", "Cancelled"}
FAIL_FAST_WAITING = {"ImagePullBackOff", "ErrImagePull", "InvalidImageName", "CreateContainerConfigError",
                     "CreateContainerError", "ErrImageNeverPull"}


def _parse_time(value: str | None) -> dt.datetime | None:
    if not value:
        return None
    return dt.datetime.fromisoformat(value.replace("Z", "+00:00"))


def _job_condition(job: dict[str, Any], type_: str) -> dict[str, Any] | None:
    for item in (job.get("status") or {}).get("conditions") or []:
        if item.get("type") == type_ and item.get("status") == "True":
            return item
    return None


class Reconciler:
    def __init__(self, kube: Kube, cache: Cache, settings: OperatorSettings) -> None:
        self.kube = kube
        self.cache = cache
        self.settings = settings
        self.queue: asyncio.Queue[Key] = asyncio.Queue()
        self.queued_keys: set[Key] = set()
        self.active_keys: set[Key] = set()
        self.dirty_keys: set[Key] = set()
        self.admission_wakeup = asyncio.Event()
        self.admission_idle = asyncio.Event()
        self.admission_idle.set()
        self.queue_info: dict[Key, admission.Queued] = {}
        self.admitting: set[Key] = set()
        self.global_budget: int | None = None
        self.budget_known = asyncio.Event()  # no admission before the budget has been read
        self.avg_run_seconds = settings.avg_run_seconds
        self.tasks: list[asyncio.Task[None]] = []
        self.runner_identities: set[str] = set()  # namespaces whose runner SA and Role exist

    # -- queueing ------------------------------------------------------------------------
    def enqueue(self, key: Key) -> None:
        if key in self.active_keys:
            self.dirty_keys.add(key)  # reconcile again after the running pass
        elif key not in self.queued_keys:
            self.queued_keys.add(key)
            self.queue.put_nowait(key)

    def enqueue_later(self, key: Key, seconds: float) -> None:
        asyncio.get_running_loop().call_later(max(0.05, seconds), self.enqueue, key)

    def poke_admission(self) -> None:
        self.admission_wakeup.set()

    def start(self) -> None:
        self.tasks = [asyncio.create_task(self._worker(i)) for i in range(self.settings.workers)]
        self.tasks.append(asyncio.create_task(self._admission_loop()))
        self.tasks.append(asyncio.create_task(self._resync_loop()))
        self.tasks.append(asyncio.create_task(self._budget_loop()))

    async def stop(self) -> None:
        for t in self.tasks:
            t.cancel()
        await asyncio.gather(*self.tasks, return_exceptions=True)

    async def _worker(self, n: int) -> None:
        while True:
            key = await self.queue.get()
            await self.admission_idle.wait()
            self.queued_keys.discard(key)
            self.active_keys.add(key)
            started = time.perf_counter()
            try:
                await self.reconcile(key)
            except (ConflictError, NotFound):
                if not await self._forget_if_gone(key):
                    self.enqueue_later(key, 0.2)
            except Exception:
                log.exception("reconcile of %s/%s/%s failed; retrying", *key)
                self.enqueue_later(key, 2.0)
            finally:
                metrics.RECONCILE_SECONDS.observe(time.perf_counter() - started)
                self.active_keys.discard(key)
                if key in self.dirty_keys:
                    self.dirty_keys.discard(key)
                    self.enqueue(key)

    async def _forget_if_gone(self, key: Key) -> bool:
        """Drop a resource the API server no longer has. Kopf's watch starts after our start-up
        listing, so a resource deleted in between (say, with its namespace) never gets a
        DELETED event; without this it would be retried forever."""
        try:
            await self.kube.get_resource(*key)
        except NotFound:
            obj = self.cache.resources.get(key)
            if obj is not None:
                self.cache.put_resource(obj, deleted=True)
                log.info("%s/%s/%s is gone; forgotten", *key)
            return True
        except Exception:
            return False
        return False

    async def _resync_loop(self) -> None:
        """Periodic pass over resources with pods: time-based rules (fail fast, GPU-seconds)
        need no event. Everything else is event-driven, or woken by its own timer (TTL)."""
        while True:
            await asyncio.sleep(10)
            for key in list(self.cache.pods):  # work with pods: running, pending or finishing
                if key in self.cache.resources:
                    self.enqueue(key)
            self._update_phase_metrics()

    def _update_phase_metrics(self) -> None:
        counts: dict[tuple[str, str], int] = {}
        for (kind, _, _), obj in self.cache.resources.items():
            phase = (obj.get("status") or {}).get("phase") or "Pending"
            counts[(kind, phase)] = counts.get((kind, phase), 0) + 1
        metrics.RESOURCES.clear()
        for (kind, phase), n in counts.items():
            metrics.RESOURCES.labels(kind=kind, phase=phase).set(n)

    # -- admission -----------------------------------------------------------------------
    def _apply_budget(self, cm: dict[str, Any] | None) -> None:
        raw = ((cm or {}).get("data") or {}).get("gpuBudget")
        try:
            budget = int(raw) if raw not in (None, "") else None
        except ValueError:
            log.error("ignoring unparsable gpuBudget %r in ConfigMap %s", raw, self.settings.quota_configmap)
            budget = None
        if budget != self.global_budget or not self.budget_known.is_set():
            log.info("global GPU budget: %s", "unlimited" if budget is None else budget)
            self.global_budget = budget
            self.budget_known.set()
            self.poke_admission()

    async def _budget_loop(self) -> None:
        """Follow the quota ConfigMap with a watch (list, then watch from the list's version),
        so a changed budget applies to the very next admission pass."""
        ns, name = self.settings.namespace, self.settings.quota_configmap
        while True:
            try:
                cm, rv = await self.kube.list_configmap(ns, name)
                self._apply_budget(cm)
                async for event in self.kube.watch_configmap(ns, name, rv):
                    obj = event.get("object") or {}
                    if event.get("type") == "ERROR":  # e.g. 410 Gone: list again
                        break
                    rv = (obj.get("metadata") or {}).get("resourceVersion", rv)
                    if event.get("type") in ("ADDED", "MODIFIED"):
                        self._apply_budget(obj)
                    elif event.get("type") == "DELETED":
                        self._apply_budget(None)
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                log.warning("watching ConfigMap %s/%s failed (%s); retrying", ns, name, exc)
                await asyncio.sleep(2)

    async def _admission_loop(self) -> None:
        while True:
            try:
                await asyncio.wait_for(self.admission_wakeup.wait(), self.settings.admission_interval_seconds)
            except TimeoutError:
                pass
            await asyncio.sleep(0.02)  # let a burst of creations land in one pass
            self.admission_wakeup.clear()
            try:
                await self.admit_pass()
            except Exception:
                log.exception("admission pass failed")
                await asyncio.sleep(1)

    def _candidates(self) -> tuple[list[admission.Candidate], list[Key]]:
        """Resources competing for GPUs, and Kueue-managed resources still without a Job."""
        out, kueue = [], []
        for key, obj in self.cache.resources.items():
            meta, spec, status = obj["metadata"], obj.get("spec") or {}, obj.get("status") or {}
            if meta.get("deletionTimestamp") or status.get("phase") in TERMINAL:
                continue
            job = self.cache.job_of(key)
            if spec.get("queueName"):
                if job is None and not spec.get("suspend") and key not in self.admitting \
                        and key[1] not in self.cache.terminating:
                    kueue.append(key)
                continue
            if job is not None and (_job_condition(job, "Complete") or _job_condition(job, "Failed")):
                continue
            admitted = key in self.admitting or (job is not None and not (job.get("spec") or {}).get("suspend"))
            if (spec.get("suspend") or key[1] in self.cache.terminating) and not admitted:
                continue  # (a terminating namespace refuses new Jobs; what runs there still holds GPUs)
            placement = spec.get("placement") or {}
            demand = int(placement.get("gpus", 1)) * (int(spec.get("parallelism", 1)) if key[0] == "DepthBatch" else 1)
            out.append(admission.Candidate(key=key, namespace=key[1], priority=int(spec.get("priority", 0)),
                                           created=meta.get("creationTimestamp", ""), demand=demand,
                                           admitted=admitted))
        return out, kueue

    async def admit_pass(self) -> None:
        await self.budget_known.wait()
        limits = admission.Limits(self.global_budget, dict(self.cache.namespace_limits))
        candidates, kueue = self._candidates()
        decision = admission.decide(candidates, limits, now=dt.datetime.now(dt.UTC),
                                    avg_run_seconds=self.avg_run_seconds)
        metrics.QUEUE_DEPTH.set(len(decision.queued))
        metrics.GPUS_IN_USE.set(decision.in_use)
        changed = set(decision.queued) ^ set(self.queue_info)
        changed |= {k for k, q in decision.queued.items()
                    if k in self.queue_info and self.queue_info[k].position != q.position}
        self.queue_info = decision.queued
        for key in changed:
            self.enqueue(key)
        work = [(k, False) for k in decision.admit] + [(k, True) for k in kueue]
        if not work:
            return
        # Job creation is what users wait for: status bookkeeping pauses while it runs.
        self.admission_idle.clear()
        self.admitting.update(k for k, _ in work)
        sem = asyncio.Semaphore(self.settings.workers * 2)

        async def one(key: Key, for_kueue: bool) -> None:
            async with sem:
                try:
                    await self._admit(key, suspend=for_kueue)
                except NotFound:
                    if not await self._forget_if_gone(key):
                        log.warning("creating the Job of %s/%s/%s: something it needs is gone; retrying", *key)
                except Exception:
                    log.exception("creating the Job of %s/%s/%s failed", *key)
                finally:
                    self.admitting.discard(key)
                    self.enqueue(key)

        try:
            await asyncio.gather(*(one(k, q) for k, q in work))
        finally:
            self.admission_idle.set()

    async def _admit(self, key: Key, *, suspend: bool) -> None:
        """Create the resource's Job (suspended for Kueue), or un-suspend it (resume)."""
        obj = self.cache.resources.get(key)
        if obj is None:
            return
        res = MODELS[key[0]].model_validate(obj)
        job = self.cache.job_of(key)
        await self._ensure_identity(key[1])
        if job is None:
            body = children.build_job(res, self.settings, suspend=suspend)
            try:
                job = await self.kube.create_job(body)
            except AlreadyExists:
                job = await self.kube.get_job(key[1], body["metadata"]["name"])
            created = _parse_time(obj["metadata"].get("creationTimestamp"))
            if created:
                metrics.ADMISSION_SECONDS.observe((dt.datetime.now(dt.UTC) - created).total_seconds())
        elif (job.get("spec") or {}).get("suspend") and not suspend:
            job = await self.kube.patch_job(key[1], job["metadata"]["name"], {"spec": {"suspend": False}})
        self.cache.put_job(job)

    # -- per-resource reconcile ----------------------------------------------------------
    async def reconcile(self, key: Key) -> None:
        obj = self.cache.resources.get(key)
        if obj is None:
            return
        meta = obj["metadata"]
        if meta.get("deletionTimestamp"):
            await self._finalize(key, obj)
            return
        if c.FINALIZER not in (meta.get("finalizers") or []):
            patched = await self.kube.patch_resource(key[0], key[1], key[2], {"metadata": {
                "finalizers": [*(meta.get("finalizers") or []), c.FINALIZER],
                "resourceVersion": meta["resourceVersion"]}})
            self.cache.put_resource(patched)
            self.poke_admission()
            obj = patched
        status = obj.get("status") or {}
        job = self.cache.job_of(key)
        if status.get("phase") in TERMINAL:
            await self._after_terminal(key, obj, job)
            return
        try:
            res = MODELS[key[0]].model_validate(obj)
        except ValidationError as exc:
            await self._write(key, obj, self._failed(obj, cond.REASON_INVALID_SPEC, str(exc)))
            return
        if job is not None:
            await self._sync_job_spec(res, job)
        desired = await self._desired_status(res, obj, job)
        if desired.get("phase") == "Failed" and job is not None and not _job_condition(job, "Failed"):
            await self.kube.delete_job(key[1], job["metadata"]["name"])  # fail fast: stop the pods
        await self._write(key, obj, desired)

    async def _ensure_identity(self, namespace: str) -> None:
        if namespace not in self.runner_identities:
            await self.kube.ensure_runner_identity(namespace, self.settings.runner_service_account)
            self.runner_identities.add(namespace)

    async def _sync_job_spec(self, res: DepthBatch | ReconstructionJob, job: dict[str, Any]) -> None:
        spec, jspec = res.spec, job.get("spec") or {}
        patch: dict[str, Any] = {}
        if spec.suspend and not jspec.get("suspend") and not _job_condition(job, "Complete"):
            patch["suspend"] = True
        if spec.active_deadline_seconds != jspec.get("activeDeadlineSeconds"):
            patch["activeDeadlineSeconds"] = spec.active_deadline_seconds
        if patch:
            self.cache.put_job(await self.kube.patch_job(job["metadata"]["namespace"], job["metadata"]["name"],
                                                         {"spec": patch}))
            self.poke_admission()

    def _failed(self, obj: dict[str, Any], reason: str, message: str) -> dict[str, Any]:
        gen = obj["metadata"].get("generation")
        status = obj.get("status") or {}
        conds = status.get("conditions") or []
        conds = set_condition(conds, cond.FAILED, "True", reason, message, gen)
        conds = set_condition(conds, cond.RUNNING, "False", reason, message, gen)
        return {"phase": "Failed", "reason": reason, "conditions": conds, "observedGeneration": gen, "message": message,
                "completionTime": status.get("completionTime") or now_iso(), "queuePosition": None,
                "estimatedStartTime": None}

    async def _desired_status(self, res: DepthBatch | ReconstructionJob, obj: dict[str, Any],
                        job: dict[str, Any] | None) -> dict[str, Any]:
        key = (res.kind, res.metadata["namespace"], res.metadata["name"])
        gen = res.metadata.get("generation")
        status = obj.get("status") or {}
        conds = list(status.get("conditions") or [])
        out: dict[str, Any] = {"observedGeneration": gen}
        pods = self.cache.pods_of(key)
        out.update(self._progress(status))
        out["gpuSeconds"] = max(float(status.get("gpuSeconds") or 0.0), self._gpu_seconds(res, pods))

        if job is None:
            if status.get("jobName"):
                return self._failed(obj, cond.REASON_JOB_LOST, f"Job {status['jobName']} was deleted while the resource was in progress")
            out["queuePosition"], out["estimatedStartTime"] = None, None
            if res.spec.suspend:
                out.update(phase="Pending", reason=cond.REASON_SUSPENDED)
                conds = set_condition(conds, cond.SUSPENDED, "True", cond.REASON_SUSPENDED, "spec.suspend is true", gen)
                conds = set_condition(conds, cond.ADMITTED, "False", cond.REASON_SUSPENDED, "suspended before admission", gen)
                out["message"] = "suspended"
            elif key in self.queue_info:
                q = self.queue_info[key]
                out.update(phase="Queued", reason=cond.REASON_QUOTA_EXCEEDED, queuePosition=q.position,
                           estimatedStartTime=q.eta.strftime("%Y-%m-%dT%H:%M:%SZ"), message=f"queued: {q.reason}")
                conds = set_condition(conds, cond.ADMITTED, "False", cond.REASON_QUOTA_EXCEEDED, q.reason, gen)
            else:
                out.update(phase="Pending", reason="AwaitingAdmission", message="waiting for admission")
            out["conditions"] = conds
            return out

        jstatus = job.get("status") or {}
        out["jobName"] = job["metadata"]["name"]
        out["attempts"] = int(jstatus.get("failed") or 0) + int(jstatus.get("succeeded") or 0) + int(jstatus.get("active") or 0)
        out["startTime"] = status.get("startTime") or jstatus.get("startTime")
        out["queuePosition"], out["estimatedStartTime"] = None, None
        if _job_condition(job, "Complete"):
            conds = set_condition(conds, cond.SUCCEEDED, "True", cond.REASON_COMPLETED, "all outputs written", gen)
            conds = set_condition(conds, cond.RUNNING, "False", cond.REASON_COMPLETED, "finished", gen)
            out.update(phase="Succeeded", reason=cond.REASON_COMPLETED, completionTime=jstatus.get("completionTime") or now_iso(),
                       manifestUri=self._manifest_uri(res), message="succeeded", conditions=conds)
            return out
        failed = _job_condition(job, "Failed")
        if failed:
            reason, message = self._failure_reason(failed, pods)
            failed_status = self._failed({**obj, "status": {**status, "conditions": conds}}, reason, message)
            return {**out, **failed_status}
        fail_fast = self._fail_fast(pods) or await self._pods_not_created(job, pods)
        if fail_fast:
            return {**out, **self._failed(obj, *fail_fast)}
        suspended = (job.get("spec") or {}).get("suspend")
        if suspended:
            if res.spec.queue_name:
                msg = f"waiting for Kueue to admit the Job in queue {res.spec.queue_name}"
                conds = set_condition(conds, cond.ADMITTED, "False", cond.REASON_WAITING_FOR_KUEUE, msg, gen)
                out.update(phase="Queued", reason=cond.REASON_WAITING_FOR_KUEUE, message=msg)
            elif res.spec.suspend:
                conds = set_condition(conds, cond.SUSPENDED, "True", cond.REASON_SUSPENDED, "spec.suspend is true", gen)
                out.update(phase="Pending", reason=cond.REASON_SUSPENDED, message="suspended")
            else:
                q = self.queue_info.get(key)
                msg = q.reason if q else "waiting for admission"
                out.update(phase="Queued" if q else "Pending", message=msg,
                           reason=cond.REASON_QUOTA_EXCEEDED if q else "AwaitingAdmission",
                           queuePosition=q.position if q else None,
                           estimatedStartTime=q.eta.strftime("%Y-%m-%dT%H:%M:%SZ") if q else None)
                conds = set_condition(conds, cond.ADMITTED, "False", cond.REASON_QUOTA_EXCEEDED, msg, gen)
            conds = set_condition(conds, cond.RUNNING, "False", cond.REASON_SUSPENDED, "the Job is suspended", gen)
            out["conditions"] = conds
            return out
        conds = set_condition(conds, cond.ADMITTED, "True", cond.REASON_JOB_CREATED, f"Job {job['metadata']['name']} created", gen)
        if res.spec.suspend is False and any(x.get("type") == cond.SUSPENDED for x in conds):
            conds = set_condition(conds, cond.SUSPENDED, "False", cond.REASON_ADMITTED, "resumed", gen)
        running = [p for p in pods if (p.get("status") or {}).get("phase") == "Running"]
        if running or int(jstatus.get("active") or 0) and int(jstatus.get("ready") or 0):
            conds = set_condition(conds, cond.RUNNING, "True", cond.REASON_POD_RUNNING, f"{len(running) or jstatus.get('ready')} runner pod(s) running", gen)
            out.update(phase="Running", reason=cond.REASON_POD_RUNNING, message="running")
        else:
            conds = set_condition(conds, cond.RUNNING, "False", cond.REASON_POD_PENDING, "waiting for a runner pod to start", gen)
            out.update(phase="Pending", reason=cond.REASON_POD_PENDING, message="admitted; waiting for a runner pod")
        out["conditions"] = conds
        return out

    def _progress(self, status: dict[str, Any]) -> dict[str, Any]:
        progress = status.get("progress") or {}
        shards = progress.get("shards") or {}
        if not shards:
            return {}
        done = sum(int(s.get("done") or 0) for s in shards.values())
        total = sum(int(s.get("total") or 0) for s in shards.values())
        stages = sorted({s.get("stage") or "" for s in shards.values()} - {""})
        return {"progress": {"done": done, "total": total, "stage": ",".join(stages)[:64]},
                "progressSummary": f"{done}/{total}"}

    def _gpu_seconds(self, res: DepthBatch | ReconstructionJob, pods: list[dict[str, Any]]) -> float:
        gpus = res.spec.placement.gpus
        total = 0.0
        now = dt.datetime.now(dt.UTC)
        for pod in pods:
            for cs in (pod.get("status") or {}).get("containerStatuses") or []:
                state = cs.get("state") or {}
                if "terminated" in state:
                    start, end = _parse_time(state["terminated"].get("startedAt")), _parse_time(state["terminated"].get("finishedAt"))
                elif "running" in state:
                    start, end = _parse_time(state["running"].get("startedAt")), now
                else:
                    continue
                if start and end:
                    total += max(0.0, (end - start).total_seconds()) * gpus
        return round(total, 3)

    def _fail_fast(self, pods: list[dict[str, Any]]) -> tuple[str, str] | None:
        now = dt.datetime.now(dt.UTC)
        for pod in pods:
            pstatus = pod.get("status") or {}
            if pstatus.get("phase") not in (None, "Pending"):
                continue
            for pc in pstatus.get("conditions") or []:
                if pc.get("type") == "PodScheduled" and pc.get("status") == "False" and pc.get("reason") == "Unschedulable":
                    since = _parse_time(pc.get("lastTransitionTime")) or now
                    if (now - since).total_seconds() >= self.settings.unschedulable_timeout_seconds:
                        return cond.REASON_UNSCHEDULABLE, f"runner pod {pod['metadata']['name']} unschedulable: {pc.get('message', '')}"
                    self.enqueue_later(self._pod_key(pod), self.settings.unschedulable_timeout_seconds - (now - since).total_seconds())
            for cs in pstatus.get("containerStatuses") or []:
                waiting = (cs.get("state") or {}).get("waiting") or {}
                if waiting.get("reason") in FAIL_FAST_WAITING:
                    created = _parse_time(pod["metadata"].get("creationTimestamp")) or now
                    reason = cond.REASON_IMAGE_PULL if "Image" in waiting["reason"] else cond.REASON_CONTAINER_CONFIG
                    if (now - created).total_seconds() >= self.settings.image_pull_grace_seconds:
                        return reason, f"runner pod {pod['metadata']['name']}: {waiting['reason']}: {waiting.get('message', '')}"
                    self.enqueue_later(self._pod_key(pod), self.settings.image_pull_grace_seconds)
        return None

    async def _pods_not_created(self, job: dict[str, Any], pods: list[dict[str, Any]]) -> tuple[str, str] | None:
        """A Job whose pods cannot even be created (quota, admission policy) fails fast too."""
        jstatus = job.get("status") or {}
        if pods or (job.get("spec") or {}).get("suspend") or any(
                int(jstatus.get(k) or 0) for k in ("active", "failed", "succeeded", "terminating")):
            return None
        created = _parse_time(job["metadata"].get("creationTimestamp"))
        age = (dt.datetime.now(dt.UTC) - created).total_seconds() if created else 0.0
        if age < self.settings.unschedulable_timeout_seconds:
            return None
        messages = await self.kube.job_failure_events(job["metadata"]["namespace"], job["metadata"]["name"])
        if not messages:
            return None
        return cond.REASON_POD_CREATION, f"the Job's pods could not be created: {messages[-1]}"

    @staticmethod
    def _pod_key(pod: dict[str, Any]) -> Key:
        labels = pod["metadata"].get("labels") or {}
        return (labels.get(c.LABEL_KIND, ""), pod["metadata"]["namespace"], labels.get(c.LABEL_NAME, ""))

    def _failure_reason(self, failed: dict[str, Any], pods: list[dict[str, Any]]) -> tuple[str, str]:
        job_reason = failed.get("reason") or ""
        for pod in pods:
            for cs in (pod.get("status") or {}).get("containerStatuses") or []:
                term = (cs.get("state") or {}).get("terminated") or {}
                if term.get("exitCode") == c.EXIT_INVALID_INPUT:
                    return cond.REASON_INVALID_INPUT, term.get("message") or "the runner rejected its input"
        if job_reason == "PodFailurePolicy":
            return cond.REASON_INVALID_INPUT, failed.get("message") or "the runner rejected its input"
        if job_reason == "DeadlineExceeded":
            return cond.REASON_DEADLINE, failed.get("message") or "activeDeadlineSeconds exceeded"
        last = ""
        for pod in pods:
            for cs in (pod.get("status") or {}).get("containerStatuses") or []:
                term = (cs.get("state") or {}).get("terminated") or {}
                if term.get("exitCode"):
                    last = f"last exit code {term['exitCode']} ({term.get('reason', 'Error')}): {term.get('message', '')}".strip()
        return cond.REASON_BACKOFF_LIMIT, (failed.get("message") or "retries exhausted") + (f"; {last}" if last else "")

    def _manifest_uri(self, res: DepthBatch | ReconstructionJob) -> str:
        meta = res.metadata
        if children.shard_count(res) == 1:
            return layout.manifest_uri(res.spec.output.uri, meta["namespace"], meta["name"], 0)
        return layout.output_base(res.spec.output.uri, meta["namespace"], meta["name"]) + "/"

    async def _write(self, key: Key, obj: dict[str, Any], desired: dict[str, Any]) -> None:
        status = obj.get("status") or {}
        patch = diff(status, desired)
        if not patch:
            return
        old_phase = status.get("phase")
        updated = await self.kube.patch_status(key[0], key[1], key[2], patch)
        self.cache.put_resource(updated)
        new_phase = desired.get("phase")
        if new_phase and new_phase != old_phase:
            metrics.TRANSITIONS.labels(kind=key[0], phase=new_phase).inc()
            warn = new_phase == "Failed"
            await self.kube.event(updated, "Warning" if warn else "Normal", f"Phase{new_phase}",
                                  desired.get("message") or new_phase, now_iso())
            if new_phase in TERMINAL:
                self.poke_admission()
                started, ended = _parse_time(desired.get("startTime")), _parse_time(desired.get("completionTime"))
                if started and ended and new_phase == "Succeeded":
                    self.avg_run_seconds = 0.8 * self.avg_run_seconds + 0.2 * (ended - started).total_seconds()

    async def _after_terminal(self, key: Key, obj: dict[str, Any], job: dict[str, Any] | None) -> None:
        status, spec = obj.get("status") or {}, obj.get("spec") or {}
        if job is not None and status.get("phase") == "Failed" and not _job_condition(job, "Failed") \
                and not _job_condition(job, "Complete"):
            await self.kube.delete_job(key[1], job["metadata"]["name"])
        ttl = spec.get("ttlSecondsAfterFinished")
        done = _parse_time(status.get("completionTime"))
        if ttl is not None and done is not None:
            left = ttl - (dt.datetime.now(dt.UTC) - done).total_seconds()
            if left <= 0:
                await self.kube.delete_resource(key[0], key[1], key[2], obj["metadata"]["uid"])
            else:
                self.enqueue_later(key, left)

    async def _finalize(self, key: Key, obj: dict[str, Any]) -> None:
        """Stop the work (delete the Job and, through it, its pods), then let the resource go."""
        job = self.cache.job_of(key)
        if job is not None:
            await self.kube.delete_job(key[1], job["metadata"]["name"])
        else:
            name = children.job_name(key[0], key[2], obj["metadata"]["uid"])
            await self.kube.delete_job(key[1], name)
        finalizers = [f for f in obj["metadata"].get("finalizers") or [] if f != c.FINALIZER]
        if len(finalizers) != len(obj["metadata"].get("finalizers") or []):
            try:
                await self.kube.patch_resource(key[0], key[1], key[2], {"metadata": {
                    "finalizers": finalizers or None, "resourceVersion": obj["metadata"]["resourceVersion"]}})
            except NotFound:
                pass
        self.queue_info.pop(key, None)
        self.poke_admission()
