"""One `researchMode` value reaches the front end, the operator and (through the operator's
Job) every runner pod; the trial Redis keeps keys (noeviction, maxmemory under its limit, a
volume by default)."""

from __future__ import annotations

from typing import Any

import pytest

from spatialforge.apiserver.core.config import Settings
from spatialforge.crds import DepthBatch
from spatialforge.crds.constants import ENV_RESEARCH_MODE
from spatialforge.operator.children import build_job
from spatialforge.operator.settings import OperatorSettings
from spatialforge.runner.settings import RunnerSettings
from tests.chart.conftest import Helm, find, pod_spec
from tests.factories import depth_batch


def _env(obj: dict[str, Any]) -> dict[str, str]:
    container = pod_spec(obj)["containers"][0]  # type: ignore[index]
    return {e["name"]: e.get("value", "") for e in container.get("env", [])}


@pytest.mark.parametrize("on", [False, True])
def test_one_value_reaches_front_end_operator_and_runner_pods(helm: Helm, on: bool, monkeypatch) -> None:
    objects = helm.render("--set", f"researchMode={str(on).lower()}")
    want = "1" if on else "0"
    front, operator = find(objects, "Deployment", "-apiserver"), find(objects, "Deployment", "-operator")
    assert _env(front)[ENV_RESEARCH_MODE] == want and _env(operator)[ENV_RESEARCH_MODE] == want

    # What each component makes of that environment.
    assert Settings(dev_mode=True, _env_file=None, **{ENV_RESEARCH_MODE: want}).research_mode is on
    settings = OperatorSettings(runner_image="example/runner:1", research_mode=want)  # type: ignore[arg-type]
    assert settings.research_mode is on
    body = depth_batch("d")
    body["metadata"].update(namespace="tenant-a", uid="1234-uid")
    job = build_job(DepthBatch.model_validate(body), settings, suspend=False)
    runner_env = {e["name"]: e["value"] for e in job["spec"]["template"]["spec"]["containers"][0]["env"]}
    assert runner_env[ENV_RESEARCH_MODE] == want
    monkeypatch.setenv(ENV_RESEARCH_MODE, runner_env[ENV_RESEARCH_MODE])
    assert RunnerSettings().research_mode is on


def test_trial_redis_never_evicts_and_keeps_its_data(helm: Helm) -> None:
    objects = helm.render("--set", "redis.enabled=true")
    redis = find(objects, "StatefulSet", "-redis")
    container = pod_spec(redis)["containers"][0]  # type: ignore[index]
    command = " ".join(str(p) for p in container["command"])
    assert "--maxmemory-policy noeviction" in command and "--maxmemory 192mb" in command
    assert container["resources"]["limits"]["memory"] == "256Mi"  # 192mb leaves room under it
    claims = redis["spec"]["volumeClaimTemplates"]
    assert [c["metadata"]["name"] for c in claims] == ["data"]
    assert not [v for v in pod_spec(redis).get("volumes", []) if v["name"] == "data"]  # type: ignore[union-attr]

    with_password = find(helm.render("--set", "redis.enabled=true", "--set", "redis.existingPasswordSecret=rp"),
                         "StatefulSet", "-redis")
    shell = pod_spec(with_password)["containers"][0]["command"][-1]  # type: ignore[index]
    assert "--maxmemory-policy noeviction" in shell and "--maxmemory 192mb" in shell

    # An evicting policy is refused by the schema.
    bad = helm.template("--set", "redis.enabled=true", "--set", "redis.maxmemoryPolicy=allkeys-lru", check=False)
    assert bad.returncode != 0 and "maxmemoryPolicy" in bad.stderr
