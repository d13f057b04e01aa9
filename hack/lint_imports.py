"""Run import-linter (.importlinter) on the one `spatialforge` package this repository installs.

The top-level folders (operator/, crds/, runner/, apiserver/) install as spatialforge.* through
setup.py's package_dir, so no single directory holds the package that import-linter's graph
builder (grimp) walks. This script lays the same modules out under a scratch directory as one
regular package (real folders, the .py files linked, never copied) and runs `lint-imports`
there with the repository's contracts. It also checks what import-linter cannot say: that
spatialforge.crds imports nothing outside the standard library but pydantic and yaml.

    python hack/lint_imports.py        (make lint-imports)
"""

from __future__ import annotations

import ast
import os
import subprocess
import sys
import tempfile
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
# Folder -> subpackage, as in setup.py.
FOLDERS = {"spatialforge": "", "operator": "operator", "crds": "crds", "runner": "runner", "apiserver": "apiserver"}
CRDS_MAY_IMPORT = {"pydantic", "pydantic_core", "yaml"}


def mirror(into: Path) -> Path:
    """Lay the package out under `into`/spatialforge; return `into`."""
    root = into / "spatialforge"
    for folder, sub in FOLDERS.items():
        src = REPO / folder
        for path in src.rglob("*.py"):
            rel = path.relative_to(src)
            if "__pycache__" in rel.parts or (folder == "spatialforge" and rel.parts[0] in FOLDERS):
                continue
            dest = root / sub / rel
            dest.parent.mkdir(parents=True, exist_ok=True)
            dest.symlink_to(path)
    return into


def crds_external_imports() -> dict[str, list[str]]:
    """Top-level modules outside the stdlib that spatialforge.crds imports -> files importing them."""
    found: dict[str, list[str]] = {}
    for path in sorted((REPO / "crds").rglob("*.py")):
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            names = [a.name for a in node.names] if isinstance(node, ast.Import) else (
                [node.module] if isinstance(node, ast.ImportFrom) and node.level == 0 and node.module else [])
            for name in names:
                top = name.split(".")[0]
                if top == "spatialforge" and name.startswith("spatialforge.crds"):
                    continue
                if top not in sys.stdlib_module_names and top not in CRDS_MAY_IMPORT:
                    found.setdefault(name, []).append(str(path.relative_to(REPO)))
    return found


def main() -> int:
    bad = crds_external_imports()
    if bad:
        for name, files in bad.items():
            print(f"spatialforge.crds may import only the stdlib, pydantic and yaml: {name} in {', '.join(files)}",
                  file=sys.stderr)
        return 1
    with tempfile.TemporaryDirectory(prefix="sf-layering-") as tmp:
        return lint(mirror(Path(tmp))).returncode


def lint(where: Path, *, capture: bool = False) -> subprocess.CompletedProcess[str]:
    """`lint-imports` with the repository's contracts on a mirrored package under `where`."""
    env = {**os.environ, "PYTHONPATH": str(where)}
    # No cache: the linked files change under a cache keyed by the scratch path.
    return subprocess.run(["lint-imports", str(REPO / ".importlinter"), "--no-cache"],
                          cwd=where, env=env, capture_output=capture, text=True)


if __name__ == "__main__":
    raise SystemExit(main())
