"""What can be checked of the images without a Docker engine: the files they copy exist and
pass .dockerignore, the extras they install are pyproject's, the entry points they name
import (and the runner's runs), and the chart and the operator name the same commands."""

from __future__ import annotations

import fnmatch
import importlib.util
import json
import os
import re
import subprocess
import sys
import tomllib
from dataclasses import dataclass, field
from pathlib import Path

import pytest
import yaml

from spatialforge.devcluster.plane import REPO
from spatialforge.operator.settings import OperatorSettings
from tests.chart.conftest import CHART, Helm, find

DOCKERFILES = ["Dockerfile.operator", "Dockerfile.runner"]
PYPROJECT = tomllib.loads((REPO / "pyproject.toml").read_text())
EXTRAS = PYPROJECT["project"]["optional-dependencies"]
OCI_LABELS = {"title", "description", "source", "licenses", "version", "revision"}


@dataclass
class Stage:
    name: str
    base: str
    instructions: list[tuple[str, str]] = field(default_factory=list)
    labels: set[str] = field(default_factory=set)

    def all(self, op: str) -> list[str]:
        return [arg for o, arg in self.instructions if o == op]


def parse(path: Path) -> tuple[dict[str, str], dict[str, Stage]]:
    """Logical instructions (continuations joined), global ARG defaults, stages by name;
    a stage inherits the labels of the stage it is built FROM."""
    text = re.sub(r"\\\n", " ", path.read_text())
    args: dict[str, str] = {}
    stages: dict[str, Stage] = {}
    current: Stage | None = None
    for line in text.splitlines():
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        op, _, rest = line.partition(" ")
        op = op.upper()
        if op == "ARG" and current is None and "=" in rest:
            k, v = rest.split("=", 1)
            args[k.strip()] = v.strip()
        elif op == "FROM":
            m = re.match(r"(\S+)(?:\s+AS\s+(\S+))?", rest, re.I)
            base, name = m.group(1), m.group(2) or f"stage{len(stages)}"
            current = Stage(name, base)
            if base in stages:
                current.labels |= stages[base].labels
            stages[name] = current
        else:
            assert current is not None, f"{path.name}: {op} before FROM"
            current.instructions.append((op, rest))
            if op == "LABEL":
                current.labels |= {k.removeprefix("org.opencontainers.image.")
                                   for k in re.findall(r"([\w.]+)=", rest)}
    return args, stages


def final_stages(stages: dict[str, Stage]) -> list[Stage]:
    """Stages that are targets: the last one, and any no other stage builds FROM or copies from."""
    used = {s.base for s in stages.values()} | {
        m for s in stages.values() for c in s.all("COPY") for m in re.findall(r"--from=(\S+)", c)}
    last = list(stages.values())[-1]
    return [s for s in stages.values() if s.name not in used or s is last]


def dockerignore_allows(rel: str) -> bool:
    allowed = True
    for raw in (REPO / ".dockerignore").read_text().splitlines():
        pat = raw.strip()
        if not pat or pat.startswith("#"):
            continue
        neg = pat.startswith("!")
        pat = pat.lstrip("!").rstrip("/")
        if pat == "**" or fnmatch.fnmatch(rel.rstrip("/"), pat) or rel.rstrip("/") == pat:
            allowed = neg
    return allowed


@pytest.fixture(params=DOCKERFILES)
def dockerfile(request: pytest.FixtureRequest) -> tuple[str, dict[str, str], dict[str, Stage]]:
    args, stages = parse(REPO / request.param)
    return request.param, args, stages


def test_base_images_are_pinned(dockerfile) -> None:
    name, args, stages = dockerfile
    for stage in stages.values():
        base = stage.base
        for k, v in args.items():
            base = base.replace(f"${{{k}}}", v)
        if base in stages:
            continue
        assert re.fullmatch(r"[\w./-]+:\d+\.\d+\.\d+[\w.-]*(@sha256:[0-9a-f]{64})?", base), (
            f"{name}: stage {stage.name} base {base!r} is not pinned to an exact version")


def test_copy_sources_exist_and_pass_dockerignore(dockerfile) -> None:
    name, _, stages = dockerfile
    for stage in stages.values():
        for copy in stage.all("COPY"):
            if "--from=" in copy:
                continue
            *sources, _dest = [p for p in copy.split() if not p.startswith("--")]
            for src in sources:
                assert (REPO / src).exists(), f"{name}: COPY {src} does not exist"
                assert dockerignore_allows(src), f"{name}: COPY {src} is excluded by .dockerignore"


def test_final_stages_are_hardened(dockerfile) -> None:
    name, _, stages = dockerfile
    for stage in final_stages(stages):
        users = [u for s in (stages.get(stage.base), stage) if s for u in s.all("USER")]
        assert users and users[-1].split(":")[0] not in ("0", "root"), f"{name}:{stage.name} runs as root"
        missing = OCI_LABELS - stage.labels
        assert not missing, f"{name}:{stage.name} lacks OCI labels {missing}"
        body = " ".join(arg for s in (stages.get(stage.base), stage) if s for _, arg in s.instructions)
        for tool in ("gcc", "build-essential", "g++", "make ", "git "):
            assert tool not in body, f"{name}:{stage.name} installs build tool {tool.strip()}"
        assert all("--from=" in c for c in stage.all("COPY")), f"{name}:{stage.name} copies sources, not the build"


def _extras_installed(stages: dict[str, Stage]) -> set[str]:
    """The extras whose requirements the RUNs read out of pyproject.toml (a literal extra, or the
    names a `for c in ...` loop feeds to `sys.argv[1]`); pip installs only those lists and the
    project's wheel (no dependency named in a Dockerfile)."""
    runs = " ".join(r for s in stages.values() for r in s.all("RUN")).replace('"', "")
    installs = re.findall(r"pip install (?:-q )?(\S+)", runs)
    assert installs and all(a in ("-r", "--extra-index-url", "--no-deps") for a in installs), (
        f"pip installs {installs}: requirements must come from pyproject.toml")
    extras = set(re.findall(r"optional-dependencies'\]\['(\w+)'\]", runs))
    if "optional-dependencies'][sys.argv[1]]" in runs:
        extras |= set(re.search(r"for c in ([\w ]+); do", runs).group(1).split())
    return extras


def test_requirements_come_from_pyproject_extras() -> None:
    _, op = parse(REPO / "Dockerfile.operator")
    _, rn = parse(REPO / "Dockerfile.runner")
    assert _extras_installed(op) == {"operator", "apiserver"}
    assert _extras_installed(rn) == {"runner"}
    for extra in ("operator", "apiserver"):
        assert not [d for d in EXTRAS[extra] if d.lower().startswith(("torch", "open3d", "transformers"))], (
            f"the slim image's extra {extra} pulls a GPU/model dependency")


def _cmd(stage: Stage) -> list[str]:
    return json.loads(stage.all("CMD")[-1])


def _import_in_subprocess(code: str) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("SPATIALFORGE_")}
    return subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120, env=env)


def test_entry_points_exist_and_import() -> None:
    _, op = parse(REPO / "Dockerfile.operator")
    _, rn = parse(REPO / "Dockerfile.runner")
    assert _cmd(op["operator"]) == ["python", "-m", "spatialforge.operator"]
    assert _cmd(rn["runner"]) == ["python", "-m", "spatialforge.runner"]
    api = _cmd(op["apiserver"])
    assert api[:3] == ["python", "-m", "uvicorn"] and "--factory" in api
    module, attr = api[3].split(":")
    for mod in ("spatialforge.operator.__main__", "spatialforge.runner.__main__"):
        assert importlib.util.find_spec(mod) is not None, mod
        proc = _import_in_subprocess(f"import {mod}")
        assert proc.returncode == 0, f"{mod} does not import cleanly:\n{proc.stderr[-2000:]}"
    proc = _import_in_subprocess(f"import {module}; assert callable({module}.{attr})")
    assert proc.returncode == 0, f"{api[3]} (the front end's app factory) does not import:\n{proc.stderr[-2000:]}"


def test_runner_entry_point_runs() -> None:
    """Run for real, without a resource: it must refuse with the invalid-input exit code (42)."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("SPATIALFORGE_")}
    proc = subprocess.run([sys.executable, "-m", "spatialforge.runner"], capture_output=True, text=True,
                          timeout=120, env=env)
    assert proc.returncode == 42, proc.stderr[-2000:]
    assert "SPATIALFORGE_KIND" in proc.stderr


def test_chart_operator_and_images_name_the_same_commands(default_objects) -> None:
    _, op = parse(REPO / "Dockerfile.operator")
    _, rn = parse(REPO / "Dockerfile.runner")
    chart_op = find(default_objects, "Deployment", "-operator")["spec"]["template"]["spec"]["containers"][0]
    chart_api = find(default_objects, "Deployment", "-apiserver")["spec"]["template"]["spec"]["containers"][0]
    assert chart_op["command"] == _cmd(op["operator"])
    assert chart_api["command"][:5] == _cmd(op["apiserver"])[:5]
    assert _cmd(rn["runner"]) == OperatorSettings().runner_command
    # the image's healthcheck and the chart's probes use the same port and path
    assert "8080/healthz" in op["operator"].all("HEALTHCHECK")[0]
    assert "8000/health" in op["apiserver"].all("HEALTHCHECK")[0]
    values = yaml.safe_load((CHART / "values.yaml").read_text())
    assert values["operator"]["healthPort"] == 8080 and values["apiserver"]["port"] == 8000
