"""The import-layering contract (.importlinter) holds, and it would catch a breach."""

from __future__ import annotations

import importlib.util
import shutil
import subprocess
import sys
from pathlib import Path
from types import ModuleType

import pytest

REPO = Path(__file__).resolve().parents[2]


def _script() -> ModuleType:
    spec = importlib.util.spec_from_file_location("lint_imports", REPO / "hack" / "lint_imports.py")
    assert spec and spec.loader
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="module")
def lint_imports() -> ModuleType:
    if shutil.which("lint-imports") is None:
        pytest.fail("lint-imports is missing: pip install -e '.[dev]' (import-linter is in the dev extra)")
    return _script()


def test_contracts_are_kept(lint_imports: ModuleType) -> None:
    proc = subprocess.run([sys.executable, str(REPO / "hack" / "lint_imports.py")], capture_output=True, text=True,
                          timeout=300)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-2000:]
    assert "4 kept, 0 broken" in proc.stdout


@pytest.mark.parametrize("folder,line,contract", [
    ("runner", "from spatialforge.operator import settings", "never import each other"),
    ("apiserver", "import spatialforge.runner.app", "never import each other"),
    ("crds", "import kubernetes_asyncio", "crds imports no other part"),
    ("crds", "from spatialforge import kubeclient", "crds imports no other part"),
    ("client", "import spatialforge.runner.app", "client imports no server code"),
    ("client", "from spatialforge.devcluster import ports", "client imports no server code"),
    ("operator", "from spatialforge.devcluster.ports import free_port", "never imports spatialforge.devcluster"),
    ("apiserver", "import spatialforge.devcluster.plane", "never imports spatialforge.devcluster"),
])
def test_a_breach_is_reported(lint_imports: ModuleType, tmp_path: Path, folder: str, line: str, contract: str) -> None:
    where = lint_imports.mirror(tmp_path)
    (where / "spatialforge" / folder / "breach.py").write_text(line + "\n")
    proc = lint_imports.lint(where, capture=True)
    assert proc.returncode != 0
    assert contract in proc.stdout and "BROKEN" in proc.stdout, proc.stdout[-2000:]


def test_crds_third_party_imports_are_only_pydantic_and_yaml(lint_imports: ModuleType) -> None:
    assert lint_imports.crds_external_imports() == {}
