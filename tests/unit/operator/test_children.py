import hashlib
from pathlib import Path

import pytest
import yaml

from spatialforge.crds import DepthBatch, ReconstructionJob
from spatialforge.crds.constants import EXIT_INVALID_INPUT, KUEUE_QUEUE_LABEL
from spatialforge.crds.kinds import kind_of
from spatialforge.crds.policy import MAX_JOB_NAME, MAX_SHARDS
from spatialforge.operator.children import build_job, job_name
from spatialforge.operator.settings import OperatorSettings
from tests.factories import depth_batch, reconstruction_job

SETTINGS = OperatorSettings(runner_image="example/runner:1")
REPO = Path(__file__).resolve().parents[3]


def load(body: dict, model: type) -> object:
    body["metadata"].update(namespace="tenant-a", uid="1234-uid")
    return model.model_validate(body)


def pod_prefix(job: str, index: int) -> str:
    """The generated-name prefix the Job controller gives an Indexed Job's pod (kubernetes
    pkg/controller/job/indexed_job_utils.go, podGenerateNameWithIndex): `<job>-<index>-`, the
    Job name cut so that the prefix keeps within 58 characters."""
    tail = f"-{index}-"
    return job + tail if len(job + tail) <= 58 else job[: 58 - len(tail)] + tail


def test_job_name_is_deterministic_and_short() -> None:
    long = "x" * 250
    assert job_name("DepthBatch", long, "u1") == job_name("DepthBatch", long, "u1")
    assert len(job_name("DepthBatch", long, "u1")) == MAX_JOB_NAME == 54
    assert job_name("DepthBatch", "a", "u1") != job_name("DepthBatch", "a", "u2")


def test_the_most_shards_is_the_schemas() -> None:
    """MAX_JOB_NAME is derived from the largest parallelism the CRD itself allows."""
    crd = yaml.safe_load((REPO / "crds" / "spatialforge.io_depthbatches.yaml").read_text())
    spec = crd["spec"]["versions"][0]["schema"]["openAPIV3Schema"]["properties"]["spec"]["properties"]
    assert spec["parallelism"]["maximum"] == MAX_SHARDS == 64
    assert MAX_JOB_NAME == 58 - len(f"-{MAX_SHARDS - 1}-")


@pytest.mark.parametrize("kind", ["DepthBatch", "ReconstructionJob"])
@pytest.mark.parametrize("length", [1, 44, 45, 46, 51, 52, 55, 60, 61, 62, 63, 120, 253])
def test_every_pod_name_keeps_the_whole_job_name(kind: str, length: int) -> None:
    """For every allowed shard index the pod's prefix is exactly `<job>-<index>-`: the uid
    hash is never cut off, whatever the resource's name."""
    uid = "0b6e1c52-6f3a-4c55-9d1e-2a7c1f0e9b11"
    job = job_name(kind, "n" * length, uid)
    assert job.endswith("-" + kind_of(kind).code + hashlib.sha256(uid.encode()).hexdigest()[:6])
    for index in range(MAX_SHARDS):
        assert pod_prefix(job, index) == f"{job}-{index}-", (length, index)


def test_names_sharing_sixty_characters_never_share_a_pod_prefix() -> None:
    """The hole this naming closes: with 60-character Job names, two resources whose names
    share their first 51 characters had pods (shard 10 and on) with the same prefix."""
    a, b = "s" * 60 + "-a", "s" * 60 + "-b"
    def kept(job: str) -> set[str]:  # the Job name as every pod's prefix keeps it
        return {pod_prefix(job, i)[: -len(f"-{i}-")] for i in range(MAX_SHARDS)}

    job_a, job_b = job_name("DepthBatch", a, "uid-a"), job_name("DepthBatch", b, "uid-b")
    assert kept(job_a) == {job_a} and kept(job_b) == {job_b} and job_a != job_b
    # Under the old 60-character names the prefixes of shard 12 were the same for both.
    legacy = [f"{n[:51]}-db{hashlib.sha256(u.encode()).hexdigest()[:6]}" for n, u in ((a, "uid-a"), (b, "uid-b"))]
    assert pod_prefix(legacy[0], 12) == pod_prefix(legacy[1], 12)


def test_indexed_job_with_gpus_hardening_and_failure_policy() -> None:
    res = load(depth_batch("d", gpus=2, parallelism=3, activeDeadlineSeconds=600, backoffLimit=4,
                           placement={"gpus": 2, "nodeSelector": {"pool": "a100"},
                                      "tolerations": [{"key": "gpu", "operator": "Exists"}],
                                      "priorityClassName": "high"}), DepthBatch)
    job = build_job(res, SETTINGS, suspend=False)
    spec, pod = job["spec"], job["spec"]["template"]["spec"]
    assert spec["completionMode"] == "Indexed" and spec["completions"] == spec["parallelism"] == 3
    assert spec["backoffLimit"] == 4 and spec["activeDeadlineSeconds"] == 600
    rules = spec["podFailurePolicy"]["rules"]
    assert rules[0]["action"] == "FailJob" and rules[0]["onExitCodes"]["values"] == [EXIT_INVALID_INPUT]
    assert rules[1]["action"] == "Ignore"
    container = pod["containers"][0]
    assert container["resources"]["limits"] == {"nvidia.com/gpu": "2"}
    assert container["securityContext"]["readOnlyRootFilesystem"] is True
    assert pod["securityContext"]["runAsNonRoot"] is True and pod["restartPolicy"] == "Never"
    assert pod["nodeSelector"] == {"pool": "a100"} and pod["priorityClassName"] == "high"
    assert pod["serviceAccountName"] == "spatialforge-runner"
    owner = job["metadata"]["ownerReferences"][0]
    assert owner["controller"] is True and owner["uid"] == "1234-uid"
    assert res.spec.gpu_demand == 6  # what admission counts (admitter.candidates)


def test_kueue_queue_label_and_suspend() -> None:
    res = load(reconstruction_job("r", queueName="gpu-queue"), ReconstructionJob)
    job = build_job(res, SETTINGS, suspend=True)
    assert job["metadata"]["labels"][KUEUE_QUEUE_LABEL] == "gpu-queue"
    assert job["spec"]["suspend"] is True and job["spec"]["completions"] == 1


def test_cpu_only_requests_no_gpu() -> None:
    res = load(depth_batch("d", gpus=0), DepthBatch)
    assert "nvidia.com/gpu" not in build_job(res, SETTINGS, suspend=False)["spec"]["template"]["spec"]["containers"][0]["resources"]["limits"]


def test_deployment_placement_defaults_merge_with_the_spec() -> None:
    settings = OperatorSettings(runner_node_selector={"pool": "gpu", "zone": "a"},
                                runner_tolerations=[{"key": "nvidia.com/gpu", "operator": "Exists", "effect": "NoSchedule"}])
    res = load(depth_batch("d", placement={"gpus": 1, "nodeSelector": {"zone": "b"},
                                           "tolerations": [{"key": "spot", "operator": "Exists"}]}), DepthBatch)
    pod = build_job(res, settings, suspend=False)["spec"]["template"]["spec"]
    assert pod["nodeSelector"] == {"pool": "gpu", "zone": "b"}
    assert [t["key"] for t in pod["tolerations"]] == ["nvidia.com/gpu", "spot"]


def test_placement_defaults_parse_from_env(monkeypatch) -> None:
    monkeypatch.setenv("SPATIALFORGE_RUNNER_NODE_SELECTOR", '{"pool": "gpu"}')
    monkeypatch.setenv("SPATIALFORGE_RUNNER_TOLERATIONS", '[{"key": "gpu", "operator": "Exists"}]')
    s = OperatorSettings()
    assert s.runner_node_selector == {"pool": "gpu"} and s.runner_tolerations[0]["key"] == "gpu"


def test_runner_resources_from_env_reach_jobs_and_pools_with_the_gpus(monkeypatch) -> None:
    from spatialforge.crds.v1alpha1.depthpool import DepthPool
    from spatialforge.operator.pool import pod_template

    monkeypatch.setenv("SPATIALFORGE_RUNNER_RESOURCES",
                       '{"requests": {"cpu": 1, "memory": "2Gi"}, "limits": {"memory": "6Gi"}}')
    settings = OperatorSettings()
    assert settings.runner_resources == {"requests": {"cpu": "1", "memory": "2Gi"}, "limits": {"memory": "6Gi"}}
    job = build_job(load(depth_batch("d", gpus=2), DepthBatch), settings, suspend=False)
    resources = job["spec"]["template"]["spec"]["containers"][0]["resources"]
    assert resources == {"requests": {"cpu": "1", "memory": "2Gi"}, "limits": {"memory": "6Gi", "nvidia.com/gpu": "2"}}
    pool = DepthPool.model_validate({"apiVersion": "spatialforge.io/v1alpha1", "kind": "DepthPool",
                                     "metadata": {"name": "p", "namespace": "ns", "uid": "u"},
                                     "spec": {"gpusPerReplica": 1}})
    replica = pod_template(pool, settings)["spec"]["containers"][0]["resources"]
    assert replica == {"requests": {"cpu": "1", "memory": "2Gi"}, "limits": {"memory": "6Gi", "nvidia.com/gpu": "1"}}
    assert settings.runner_resources["limits"] == {"memory": "6Gi"}  # never mutated by a build


def test_runner_resources_default_to_the_requests_jobs_always_had() -> None:
    resources = build_job(load(depth_batch("d", gpus=0), DepthBatch), SETTINGS, suspend=False)[
        "spec"]["template"]["spec"]["containers"][0]["resources"]
    assert resources == {"requests": {"cpu": "1", "memory": "4Gi"}, "limits": {}}
