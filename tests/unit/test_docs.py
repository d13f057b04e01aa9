"""hack/check_docs.py: the docs agree with the code, and the check catches a doc that does not."""

from __future__ import annotations

import importlib.util
import subprocess
import sys
from pathlib import Path
from types import ModuleType

import pytest

REPO = Path(__file__).resolve().parents[2]
SCRIPT = REPO / "hack" / "check_docs.py"


@pytest.fixture(scope="module")
def check_docs() -> ModuleType:
    spec = importlib.util.spec_from_file_location("check_docs", SCRIPT)
    assert spec and spec.loader
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up
    spec.loader.exec_module(module)
    return module


def run(*docs: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, str(SCRIPT), *map(str, docs)], capture_output=True, text=True, check=False,
                          timeout=120, cwd=REPO)


def test_the_docs_agree_with_the_code() -> None:
    proc = run()
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "agree with the code" in proc.stdout


def test_a_wrong_kind_list_fails(tmp_path: Path, check_docs: ModuleType) -> None:
    doc = tmp_path / "wrong.md"
    doc.write_text("Intro.\n\nDepth as two custom resources, `DepthBatch` and `ReconstructionJob` (group x).\n")
    proc = run(doc)
    assert proc.returncode == 1, proc.stdout + proc.stderr
    kinds = check_docs.shipped_kinds()
    assert {"DepthBatch", "ReconstructionJob", "DepthPool"} <= kinds
    assert f"wrong.md:3: 'two custom resources': this repository ships {len(kinds)} kinds" in proc.stdout
    assert "names DepthBatch, ReconstructionJob; the kinds are" in proc.stdout


def test_a_right_kind_list_passes(tmp_path: Path, check_docs: ModuleType) -> None:
    kinds = sorted(check_docs.shipped_kinds())
    words = {2: "two", 3: "three", 4: "four", 5: "five"}
    doc = tmp_path / "right.md"
    doc.write_text(f"As {words[len(kinds)]} custom resources, {', '.join(f'`{k}`' for k in kinds)}. "
                   "Both work kinds run as Jobs.\n")
    proc = run(doc)
    assert proc.returncode == 0, proc.stdout + proc.stderr


@pytest.mark.parametrize("text,problem", [
    ("The operator's start-up checks both CRDs.", "'both CRDs': this repository ships"),
    ("Remove `kubectl delete crd depthbatches.spatialforge.io depthjobs.spatialforge.io`.",
     "depthjobs.spatialforge.io is no CRD of this repository"),
    ("Set `SPATIALFORGE_NO_SUCH_THING=1`.", "SPATIALFORGE_NO_SUCH_THING is read by no settings class"),
    ("Every `SPATIALFORGE_NOPE_*` variable.", "no setting or code name starts with SPATIALFORGE_NOPE_"),
    ("Hand-off: `SPATIALFORGE_POOL_HANDOFF_MAX_IMAGES` (default `4`).",
     "SPATIALFORGE_POOL_HANDOFF_MAX_IMAGES: the docs say default '4', the settings default is '0'"),
    ("The chart's `operator.poolHandoffMaxImages` (values default `0`).",
     "operator.poolHandoffMaxImages: the docs say values default '0', values.yaml has '4'"),
    ("See `operator/no_such_module.py`.", "operator/no_such_module.py does not exist"),
    ("Alert on `spatialforge_operator_handoffs_total`.",
     "metric spatialforge_operator_handoffs_total is defined nowhere"),
    ("![console](screenshots/no-such.png)", "link target screenshots/no-such.png does not exist"),
    ("Export ahead with `python -m spatialforge.runner.models.backends`.",
     "`python -m spatialforge.runner.models.backends`: runner/models/backends.py does not run as a command"),
    ("Or `python -m spatialforge.runner.nothing`.", "`python -m spatialforge.runner.nothing`: no such module"),
    ("Run `python bench/no_such_bench.py --runs 2`.", "`python bench/no_such_bench.py`: no such script"),
    ("- `bench/` (each prints a final JSON line):\n  `api_load.py`, `sync_frontend.py`.\n",
     "bench/sync_frontend.py is listed as a bench but has no"),
    ("- `bench/` (each prints a final JSON line):\n  `api_load.py`.\n", "bench/reconstruct.py runs as a bench but is not listed"),
])
def test_each_check_catches_a_false_statement(tmp_path: Path, check_docs: ModuleType, text: str,
                                              problem: str) -> None:
    doc = tmp_path / "doc.md"
    doc.write_text(text + "\n")
    found = [str(p) for p in check_docs.check([doc])]
    assert any(problem in f for f in found), found


def test_stated_defaults_are_read_from_the_settings(check_docs: ModuleType) -> None:
    """The default the docs must state is the settings class's own, not a copy in the script."""
    from spatialforge.operator.settings import OperatorSettings

    names = check_docs.env_names_of(OperatorSettings)
    assert names["SPATIALFORGE_POOL_HANDOFF_MAX_IMAGES"] == OperatorSettings.model_fields["pool_handoff_max_images"].default


def test_a_missing_document_is_a_clear_error(tmp_path: Path) -> None:
    proc = run(tmp_path / "absent.md")
    assert proc.returncode == 2
    assert "no such document" in proc.stderr
