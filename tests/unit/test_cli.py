"""The `spatialforge` command lists every subcommand; one whose extra is missing says what to install."""

from __future__ import annotations

import subprocess
import sys

import pytest
from click.testing import CliRunner

from spatialforge.cli import main

# A child interpreter where these modules cannot be imported, as on an install without the extra.
_WITHOUT = """
import sys
for name in {blocked!r}:
    sys.modules[name] = None
from spatialforge.cli import main
main({argv!r}, prog_name="spatialforge")
"""


def _run_without(blocked: list[str], argv: list[str]) -> subprocess.CompletedProcess[str]:
    code = _WITHOUT.format(blocked=blocked, argv=argv)
    return subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)


def test_every_subcommand_is_listed_without_importing_its_extra() -> None:
    out = CliRunner().invoke(main, ["--help"])
    assert out.exit_code == 0, out.output
    for name in ("api", "client", "crds", "depth", "devcluster", "measure", "operator", "run", "runner"):
        assert f"\n  {name} " in out.output, out.output
    assert "serve " in CliRunner().invoke(main, ["runner", "--help"]).output


def test_the_installed_commands_are_the_real_ones() -> None:
    out = CliRunner().invoke(main, ["client", "--help"])
    assert out.exit_code == 0 and "submit" in out.output, out.output
    assert "--max-batch" in CliRunner().invoke(main, ["runner", "serve", "--help"]).output


@pytest.mark.parametrize(("blocked", "argv", "message"), [
    (["torch"], ["run", "manifest.yaml"], "`spatialforge run` needs the runner extra (torch not installed): "
                                          "pip install 'spatialforge[runner]'"),
    (["uvicorn"], ["runner", "serve"], "`spatialforge runner serve` needs the runner extra (uvicorn not installed)"),
    (["fastapi"], ["api", "keys", "list"], "pip install 'spatialforge[apiserver]'"),
    (["httpx"], ["depth", "a.png"], "`spatialforge depth` needs the base install (httpx not installed)"),
])
def test_a_missing_extra_fails_with_what_to_install(blocked: list[str], argv: list[str], message: str) -> None:
    proc = _run_without(blocked, argv)
    assert proc.returncode == 1, proc.stdout + proc.stderr
    assert message in proc.stderr, proc.stderr
    listing = _run_without(blocked, ["--help"])
    assert listing.returncode == 0 and f"\n  {argv[0]} " in listing.stdout, listing.stdout + listing.stderr
