from spatialforge.crds import DepthBatch, ReconstructionJob
from spatialforge.crds.constants import EXIT_INVALID_INPUT, KUEUE_QUEUE_LABEL
from spatialforge.operator.children import build_job, job_name
from spatialforge.operator.settings import OperatorSettings
from tests.factories import depth_batch, reconstruction_job

SETTINGS = OperatorSettings(runner_image="example/runner:1")


def load(body: dict, model: type) -> object:
    body["metadata"].update(namespace="tenant-a", uid="1234-uid")
    return model.model_validate(body)


def test_job_name_is_deterministic_and_short() -> None:
    long = "x" * 250
    assert job_name("DepthBatch", long, "u1") == job_name("DepthBatch", long, "u1")
    assert len(job_name("DepthBatch", long, "u1")) <= 63
    assert job_name("DepthBatch", "a", "u1") != job_name("DepthBatch", "a", "u2")


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
