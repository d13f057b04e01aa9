"""One `researchMode` value reaches the front end, the operator and (through the operator's
Job) every runner pod; the trial Redis keeps keys (noeviction, maxmemory under its limit, a
volume by default)."""

from __future__ import annotations

from typing import Any

import pytest

from spatialforge.apiserver.core.config import Settings
from spatialforge.crds import DepthBatch
from spatialforge.crds.constants import ENV_RESEARCH_MODE
from spatialforge.devcluster.ports import free_port
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
    assert RunnerSettings.from_env().research_mode is on


def _redis_argv(container: dict[str, Any]) -> list[str]:
    return [str(p) for p in (*container["command"], *container.get("args", []))]


def test_trial_redis_never_evicts_and_keeps_its_data(helm: Helm) -> None:
    objects = helm.render("--set", "redis.enabled=true")
    redis = find(objects, "StatefulSet", "-redis")
    container = pod_spec(redis)["containers"][0]  # type: ignore[index]
    command = " ".join(_redis_argv(container))
    assert "--maxmemory-policy noeviction" in command and "--maxmemory 192mb" in command
    assert container["resources"]["limits"]["memory"] == "256Mi"  # 192mb leaves room under it
    claims = redis["spec"]["volumeClaimTemplates"]
    assert [c["metadata"]["name"] for c in claims] == ["data"]
    assert not [v for v in pod_spec(redis).get("volumes", []) if v["name"] == "data"]  # type: ignore[union-attr]

    with_password = find(helm.render("--set", "redis.enabled=true", "--set", "redis.existingPasswordSecret=rp"),
                         "StatefulSet", "-redis")
    argv = " ".join(_redis_argv(pod_spec(with_password)["containers"][0]))  # type: ignore[index]
    assert "--maxmemory-policy noeviction" in argv and "--maxmemory 192mb" in argv

    # An evicting policy is refused by the schema.
    bad = helm.template("--set", "redis.enabled=true", "--set", "redis.maxmemoryPolicy=allkeys-lru", check=False)
    assert bad.returncode != 0 and "maxmemoryPolicy" in bad.stderr


@pytest.mark.parametrize("password", [False, True])
def test_trial_redis_starts_the_same_in_the_official_and_a_debian_image(helm: Helm, password: bool) -> None:
    """No shell, no entry-point script, no config file: `redis-server` from PATH (the official
    image's /usr/local/bin, Debian's /usr/bin) with every setting as an argument; the only
    writable path (read-only root, the pod's non-root user) is /data, also its working dir.
    The password comes from the Secret through the kubelet's $(VAR) expansion."""
    extra = ["--set", "redis.existingPasswordSecret=rp"] if password else []
    objects = helm.render("--set", "redis.enabled=true", "--set", "redis.persistence.enabled=false", *extra)
    spec = pod_spec(find(objects, "StatefulSet", "-redis"))
    assert spec is not None
    c = spec["containers"][0]
    assert c["command"] == ["redis-server"], "a bare name on PATH works in both images; no sh -c"
    args = [str(a) for a in c["args"]]
    opts = dict(zip(args[::2], args[1::2]))
    assert len(args) % 2 == 0 and all(k.startswith("--") for k in opts), args
    assert opts["--dir"] == "/data" and opts["--appendonly"] == "yes" and opts["--daemonize"] == "no"
    assert opts["--port"] == "6379" and opts["--logfile"] == ""  # logs to stdout, no file
    assert c["workingDir"] == "/data"
    assert {m["mountPath"]: m["name"] for m in c["volumeMounts"]} == {"/data": "data"}
    assert {"name": "data", "emptyDir": {}} in spec["volumes"]
    sc, psc = c["securityContext"], spec["securityContext"]
    assert sc["readOnlyRootFilesystem"] is True and sc["runAsNonRoot"] is True
    assert psc["runAsUser"] == 10001 and psc["fsGroup"] == 10001  # the volume is the user's group's
    if password:
        assert opts["--requirepass"] == "$(REDIS_PASSWORD)" and "--protected-mode" not in opts
        [env] = c["env"]
        assert env["name"] == "REDIS_PASSWORD" and env["valueFrom"]["secretKeyRef"] == {"name": "rp", "key": "password"}
    else:
        assert opts["--protected-mode"] == "no" and "--requirepass" not in opts and "env" not in c


def test_trial_redis_command_runs_on_this_machine(helm: Helm, tmp_path) -> None:
    """The rendered arguments start a real redis-server (Debian's package, as `make install`
    puts it here), which then answers with the settings given."""
    import shutil
    import subprocess
    import time

    server = shutil.which("redis-server")
    if server is None:
        pytest.fail("redis-server is missing: make install (hack/install.sh) installs Debian's redis-server")
    c = pod_spec(find(helm.render("--set", "redis.enabled=true", "--set", "redis.existingPasswordSecret=rp"),
                      "StatefulSet", "-redis"))["containers"][0]  # type: ignore[index]
    port = free_port()
    args = [str(a) for a in c["args"]]
    args[args.index("--port") + 1] = str(port)
    args[args.index("--dir") + 1] = str(tmp_path)
    args = [a.replace("$(REDIS_PASSWORD)", "pw-0123456789") for a in args]
    proc = subprocess.Popen([server, *args], cwd=tmp_path, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    try:
        cli = [shutil.which("redis-cli") or "redis-cli", "-p", str(port), "-a", "pw-0123456789", "--no-auth-warning"]
        deadline = time.monotonic() + 10
        while True:
            out = subprocess.run([*cli, "config", "get", "maxmemory-policy"], capture_output=True, text=True)
            if out.returncode == 0 and "noeviction" in out.stdout or time.monotonic() > deadline:
                break
            time.sleep(0.1)
        assert out.stdout.split() == ["maxmemory-policy", "noeviction"], out
        assert subprocess.run([*cli, "set", "k", "v"], capture_output=True, text=True).stdout.strip() == "OK"
        assert (tmp_path / "appendonlydir").is_dir()
    finally:
        proc.terminate()
        proc.wait(timeout=10)
