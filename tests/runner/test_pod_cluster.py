"""The in-pod entry against a real API server: GET the resource, patch only its shard's progress.

Runs as the runner's service account with the least RBAC it needs (get the resource, patch its
status subresource), with inputs and outputs on the session's MinIO.
"""

from __future__ import annotations

import io
import json
import os

import numpy as np
import pytest
import yaml
from PIL import Image

from spatialforge.crds import layout
from spatialforge.runner.app import run_in_pod
from spatialforge.runner.settings import RunnerSettings
from spatialforge.runner.storage.s3 import S3Settings, S3Store
from tests.integration.runner_identity import bound_token, stand_in_pod

pytestmark = pytest.mark.integration

RUNNER_RULES = [
    {"apiGroups": ["spatialforge.io"], "resources": ["depthbatches", "reconstructionjobs"], "verbs": ["get"]},
    {"apiGroups": ["spatialforge.io"], "resources": ["depthbatches/status", "reconstructionjobs/status"], "verbs": ["patch"]},
]


def _runner_kubeconfig(cluster, namespace: str, tmp_path, name: str, index: int = 0) -> str:
    """A kubeconfig holding a token of the namespace's spatialforge-runner service account, bound
    to a stand-in pod of shard `index` of the resource's Job: the runner-status admission policy
    lets only such a pod patch that shard's progress."""
    cluster.apply({"apiVersion": "v1", "kind": "ServiceAccount", "metadata": {"name": "spatialforge-runner"}}, namespace)
    cluster.apply({"apiVersion": "rbac.authorization.k8s.io/v1", "kind": "Role",
                   "metadata": {"name": "spatialforge-runner"}, "rules": RUNNER_RULES}, namespace)
    cluster.apply({"apiVersion": "rbac.authorization.k8s.io/v1", "kind": "RoleBinding",
                   "metadata": {"name": "spatialforge-runner"},
                   "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "Role", "name": "spatialforge-runner"},
                   "subjects": [{"kind": "ServiceAccount", "name": "spatialforge-runner", "namespace": namespace}]},
                  namespace)
    token = bound_token(cluster, namespace, stand_in_pod(cluster, namespace, "depthbatches", name, index))
    config = yaml.safe_load(cluster.kubeconfig.read_text())
    config["users"][0]["user"] = {"token": token}
    path = tmp_path / f"runner-kubeconfig-{index}"
    path.write_text(yaml.safe_dump(config))
    return str(path)


async def test_pod_runs_its_shard_and_patches_progress(cluster, namespace, s3, model_dir, tmp_path, runner_env):
    store = S3Store(S3Settings.from_runner(RunnerSettings.from_env()))
    for i in range(5):
        buf = io.BytesIO()
        Image.fromarray(np.full((24, 32, 3), 40 * i, np.uint8)).save(buf, format="PNG")
        store.put(f"s3://{s3}/in/{i}.png", buf.getvalue())
    output = f"s3://{s3}/out"
    cluster.apply({
        "apiVersion": "spatialforge.io/v1alpha1", "kind": "DepthBatch", "metadata": {"name": "batch"},
        "spec": {"inputs": [f"s3://{s3}/in/"], "output": {"uri": output}, "parallelism": 2, "placement": {"gpus": 0},
                 "suspend": True},  # keep the operator from starting a Job of its own
    }, namespace)
    for index in (0, 1):
        kubeconfig = _runner_kubeconfig(cluster, namespace, tmp_path, "batch", index)
        env = {  # the pod's whole environment: the object store's settings come from the process's
            **os.environ,
            "SPATIALFORGE_KIND": "DepthBatch", "SPATIALFORGE_NAME": "batch", "SPATIALFORGE_NAMESPACE": namespace,
            "JOB_COMPLETION_INDEX": str(index), "KUBECONFIG": kubeconfig, "SPATIALFORGE_MODEL_DIR": str(model_dir),
            "SPATIALFORGE_TERMINATION_LOG": str(runner_env), "SPATIALFORGE_DEVICE": "cpu",
            "SPATIALFORGE_PROGRESS_INTERVAL": "0.2",
        }
        outcome = await run_in_pod(env)
        assert outcome.exit_code == 0, outcome.reason
        assert outcome.results[0].manifest_uri == layout.manifest_uri(output, namespace, "batch", index)
    shards = cluster.get("depthbatch", "batch", namespace)["status"]["progress"]["shards"]
    assert set(shards) == {"0", "1"}
    assert (shards["0"]["done"], shards["0"]["total"], shards["0"]["stage"]) == (3, 3, "done")
    assert (shards["1"]["done"], shards["1"]["total"], shards["1"]["stage"]) == (2, 2, "done")
    assert all(s["updatedAt"].endswith("Z") for s in shards.values())
    inputs = [json.loads(store.get(layout.manifest_uri(output, namespace, "batch", i)))["images"] for i in (0, 1)]
    assert sorted(r["input"] for shard in inputs for r in shard) == [f"s3://{s3}/in/{i}.png" for i in range(5)]


async def test_pod_with_an_invalid_spec_exits_42(cluster, namespace, tmp_path, runner_env):
    cluster.apply({
        "apiVersion": "spatialforge.io/v1alpha1", "kind": "DepthBatch", "metadata": {"name": "big"},
        "spec": {"inputs": ["s3://bucket/in/"], "output": {"uri": "s3://bucket/out"}, "suspend": True},
    }, namespace)
    env = {"SPATIALFORGE_KIND": "DepthBatch", "SPATIALFORGE_NAME": "big", "SPATIALFORGE_NAMESPACE": namespace,
           "JOB_COMPLETION_INDEX": "3", "KUBECONFIG": _runner_kubeconfig(cluster, namespace, tmp_path, "big", 3),
           "SPATIALFORGE_TERMINATION_LOG": str(runner_env)}
    outcome = await run_in_pod(env)
    assert outcome.exit_code == 42 and "out of range" in runner_env.read_text()


async def test_pod_failure_leaves_a_failed_stage_and_no_manifest(cluster, namespace, s3, model_dir, tmp_path, runner_env):
    cluster.apply({
        "apiVersion": "spatialforge.io/v1alpha1", "kind": "DepthBatch", "metadata": {"name": "missing"},
        "spec": {"inputs": [f"s3://{s3}/nothing-here.png"], "output": {"uri": f"s3://{s3}/out"}, "suspend": True},
    }, namespace)
    env = {**os.environ, "SPATIALFORGE_KIND": "DepthBatch", "SPATIALFORGE_NAME": "missing", "SPATIALFORGE_NAMESPACE": namespace,
           "KUBECONFIG": _runner_kubeconfig(cluster, namespace, tmp_path, "missing"), "SPATIALFORGE_MODEL_DIR": str(model_dir),
           "SPATIALFORGE_TERMINATION_LOG": str(runner_env)}
    outcome = await run_in_pod(env)
    assert outcome.exit_code == 42 and "does not exist" in runner_env.read_text()
    shard = cluster.get("depthbatch", "missing", namespace)["status"]["progress"]["shards"]["0"]
    assert shard["stage"] == "failed"
    assert S3Store(S3Settings.from_runner(RunnerSettings.from_env())).list(f"s3://{s3}/out/") == []
