"""The in-pod entry: environment parsing, progress throttling, exit codes and termination messages.

The Kubernetes calls themselves are exercised against a real API server by the integration
tier (tests/integration); here only the runner's own logic is checked.
"""

from __future__ import annotations

import asyncio
import itertools
import subprocess
import sys

import pytest

from spatialforge.crds.constants import EXIT_INVALID_INPUT
from spatialforge.runner.app import load_settings, pod_identity, run_in_pod
from spatialforge.runner.errors import InvalidSpecError
from spatialforge.runner.kube import ProgressPatcher
from spatialforge.runner.progress import Progress, Snapshot


def test_pod_settings_from_env():
    env = {"SPATIALFORGE_KIND": "DepthBatch", "SPATIALFORGE_NAME": "b", "SPATIALFORGE_NAMESPACE": "t", "JOB_COMPLETION_INDEX": "3"}
    s = load_settings(env)
    assert pod_identity(s) == ("DepthBatch", "b", "t")
    assert (s.shard_index, s.kubeconfig) == (3, None)
    assert load_settings({**env, "JOB_COMPLETION_INDEX": ""}).shard_index == 0
    with pytest.raises(InvalidSpecError, match="SPATIALFORGE_NAME"):
        pod_identity(load_settings({"SPATIALFORGE_KIND": "DepthBatch", "SPATIALFORGE_NAMESPACE": "t"}))
    with pytest.raises(InvalidSpecError, match="JOB_COMPLETION_INDEX"):
        load_settings({**env, "JOB_COMPLETION_INDEX": "three"})


def test_snapshot_is_a_shard_progress_body():
    from spatialforge.crds.v1alpha1.common import ShardProgress

    body = Snapshot(done=2, total=5, stage="depth").as_status()
    parsed = ShardProgress.model_validate(body)
    assert (parsed.done, parsed.total, parsed.stage) == (2, 5, "depth")
    assert body["updatedAt"].endswith("Z")


class _Recorder:
    """Stands in for ResourceClient to observe what the patcher sends and when."""

    def __init__(self) -> None:
        self.sent: list[tuple[float, int, dict]] = []

    async def patch_shard(self, index: int, snap: Snapshot) -> None:
        self.sent.append((asyncio.get_running_loop().time(), index, snap.as_status()))


async def test_progress_is_rate_limited_with_a_final_patch():
    interval = 0.2
    progress, rec = Progress(), _Recorder()
    patcher = ProgressPatcher(rec, progress, 4, interval=interval)  # type: ignore[arg-type]
    loop = asyncio.get_running_loop()
    started = loop.time()
    patcher.start()
    for i in range(60):  # 60 updates, each one changes the progress
        progress.update(done=i + 1, total=60, stage="depth")
        await asyncio.sleep(0.01)
    elapsed = loop.time() - started  # measured: a loaded machine sleeps longer than 0.6 s
    await patcher.close()
    periodic, final = rec.sent[:-1], rec.sent[-1]
    # The first patch goes out after 0.05 s, then at most one per interval while it changes.
    assert 1 <= len(periodic) <= 1 + (elapsed - 0.05) / interval, (len(periodic), elapsed)
    times = [t for t, _, _ in periodic]
    assert all(b - a >= interval - 0.01 for a, b in itertools.pairwise(times)), times
    assert final[2]["done"] == 60 and {i for _, i, _ in rec.sent} == {4}


async def test_final_patch_carries_the_floor_plan_figures():
    """The reconstruction stage's last update carries the plan's area and rooms, which the operator copies."""
    from spatialforge.crds.v1alpha1.common import ShardProgress

    progress, rec = Progress(), _Recorder()
    patcher = ProgressPatcher(rec, progress, 0, interval=10.0)  # type: ignore[arg-type]
    patcher.start()
    progress.update(done=0, total=3, stage="floorplan")
    progress.update(done=3, stage="done", floor_area_m2=23.45678, room_count=2)
    await patcher.close()
    body = rec.sent[-1][2]
    assert (body["floorAreaM2"], body["roomCount"], body["stage"]) == (23.457, 2, "done")
    assert ShardProgress.model_validate(body).room_count == 2
    assert "floorAreaM2" not in Snapshot(done=1, total=1, stage="done").as_status()  # no plan: no figures


async def test_run_in_pod_without_env_is_invalid(runner_env):
    outcome = await run_in_pod({"SPATIALFORGE_TERMINATION_LOG": str(runner_env)})
    assert outcome.exit_code == EXIT_INVALID_INPUT
    assert "SPATIALFORGE_KIND" in runner_env.read_text()


def test_module_entry_point_exit_code(tmp_path):
    log = tmp_path / "term"
    env = {"PATH": "/usr/bin:/bin", "SPATIALFORGE_TERMINATION_LOG": str(log), "SPATIALFORGE_KIND": "Nope",
           "SPATIALFORGE_NAME": "x", "SPATIALFORGE_NAMESPACE": "y"}
    proc = subprocess.run([sys.executable, "-m", "spatialforge.runner"], env=env, capture_output=True, text=True, timeout=120)
    assert proc.returncode == EXIT_INVALID_INPUT, proc.stderr
    assert "unknown SPATIALFORGE_KIND 'Nope'" in log.read_text()


def test_unwritable_termination_log_is_ignored(monkeypatch):
    from spatialforge.runner.termination import write_termination_message

    assert write_termination_message("x", "/proc/nope/termination-log") is False
