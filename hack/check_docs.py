"""Fail when the docs state a fact the code contradicts, for the facts a script can read.

    python hack/check_docs.py [DOC ...]      (make verify; default: DOCS)

What is checked, in every document given:

- kinds: a phrase that counts the custom resources ("three custom resources", "both kinds",
  "two CRDs") counts the kinds of the registry (crds/kinds.py `ALL_KINDS`), and the backticked kinds named right after it in the same sentence
  are exactly those ("work kinds" is a narrower set and is not counted); every CRD name
  (`<plural>.spatialforge.io`) is one of theirs.
- env names: every `SPATIALFORGE_*` name is read by a pydantic-settings class of the product,
  or named as a whole quoted string in product code (read or set there), set or read by a
  script in hack/, or set by a chart template. A name ending in `_*` must start some name.
- defaults: "`SPATIALFORGE_X` (default `V`" equals that settings field's default, and
  "`a.b` (values default `V`" equals charts/spatialforge/values.yaml.
- paths: every backticked repository path with a file extension exists, and so does every
  relative Markdown link or image target (from the document's folder).
- metrics: every Prometheus metric the docs name (`sf_api_*`, `spatialforge_operator_*`,
  `spatialforge_serve_*`) is defined by the product's code (a counter's `_total`, a histogram's
  `_bucket`/`_count`/`_sum` included).
- commands: every `python -m spatialforge.<module>` names a module that runs as a command
  (a package's `__main__.py`, or a module with an `if __name__ == "__main__":` block), and
  every `python <folder>/<script>.py` names a script that exists.
- benches: the README's bullet "- `bench/` (each prints a final JSON line...)" names exactly
  the bench/*.py scripts that run as a command (an `if __name__ == "__main__":` block).

Prints one `file:line: problem` per finding and exits 1 when there is any. Fast and
server-free: it imports only the settings modules and crds/kinds.py.
"""

from __future__ import annotations

import ast
import importlib
import json
import re
import sys
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from enum import Enum
from pathlib import Path
from typing import Any

import yaml

REPO = Path(__file__).resolve().parent.parent
DOCS = ("README.md", "docs/*.md", "runner/README.md", "charts/spatialforge/README.md")
VALUES = REPO / "charts" / "spatialforge" / "values.yaml"
NUMBERS = {"one": 1, "two": 2, "three": 3, "four": 4, "five": 5, "six": 6, "both": 2}
KIND_COUNT = re.compile(r"\b(?<!work )(one|two|three|four|five|six|both|\d+)\s+(custom\s+resources|kinds|CRDs)\b", re.IGNORECASE)
CRD_NAME = re.compile(r"\b[a-z0-9-]+\.spatialforge\.io\b(?![/.\w-])")
DOC_ENV = re.compile(r"SPATIALFORGE_[A-Z0-9_]*\*?")
CODE_ENV = re.compile(r"""["'](SPATIALFORGE_[A-Z0-9_]+)["']""")
FSTRING_ENV = re.compile(r"""f["'](SPATIALFORGE_[A-Z0-9_]*_)\{""")
SHELL_ENV = re.compile(r"\$\{?(SPATIALFORGE_[A-Z0-9_]+)|\b(SPATIALFORGE_[A-Z0-9_]+)=")
TEMPLATE_ENV = re.compile(r"name:\s*(SPATIALFORGE_[A-Z0-9_]+)")
ENV_DEFAULT = re.compile(r"`(SPATIALFORGE_[A-Z0-9_]+)`\s+\(default\s+`([^`]*)`")
VALUES_DEFAULT = re.compile(r"`([a-z][A-Za-z0-9]*(?:\.[A-Za-z0-9]+)+)`\s+\(values\s+default\s+`([^`]*)`")
MD_LINK = re.compile(r"\]\((?!https?:|mailto:|#)([^)\s#]+)(?:#[^)\s]*)?\)")
BACKTICKED = re.compile(r"`([^`\s]+)`")
FILE_EXT = re.compile(r"\.(py|md|ya?ml|sh|json|tpl|txt|toml|cfg|lua|ini)$")
BENCH_BULLET = re.compile(r"^- `bench/` \(each prints a final JSON line[^\n]*\n(?:  [^\n]*\n)*", re.MULTILINE)
DOC_METRIC = re.compile(r"\b(?:sf_api|spatialforge_(?:operator|serve|runner))_[a-z0-9_]+")
CODE_METRIC = re.compile(r"""\b(?:Counter|Gauge|Histogram|Summary|Info|Enum)\(\s*["']([a-zA-Z_:][a-zA-Z0-9_:]*)["']""")
METRIC_SUFFIXES = ("_total", "_bucket", "_count", "_sum", "_created")
PYTHON_M = re.compile(r"python3?\s+-m\s+(spatialforge(?:\.\w+)*)")
PYTHON_SCRIPT = re.compile(r"python3?\s+((?:bench|hack|tests)/[\w/.-]+\.py)\b")
MAIN_BLOCK = re.compile(r"^if __name__ == [\"']__main__[\"']:", re.MULTILINE)


@dataclass(frozen=True)
class Problem:
    doc: Path
    line: int
    what: str

    def __str__(self) -> str:
        try:
            where = self.doc.resolve().relative_to(REPO)
        except ValueError:
            where = self.doc
        return f"{where}:{self.line}: {self.what}"


def folders() -> dict[str, str]:
    """Top-level folder -> installed package, read from setup.py's FOLDERS literal."""
    tree = ast.parse((REPO / "setup.py").read_text())
    for node in tree.body:
        if isinstance(node, ast.Assign) and any(isinstance(t, ast.Name) and t.id == "FOLDERS" for t in node.targets):
            value = ast.literal_eval(node.value)
            assert isinstance(value, dict)
            return {str(k): str(v) for k, v in value.items()}
    raise SystemExit("check_docs: setup.py has no FOLDERS mapping")


def _line(text: str, offset: int) -> int:
    return text.count("\n", 0, offset) + 1


# -- the code's side ----------------------------------------------------------------------------

def shipped_crds() -> dict[str, str]:
    """Kind -> CRD name (`<plural>.<group>`) of every kind in the registry (crds/kinds.py
    ALL_KINDS: the kinds of work and DepthPool); `make crds` renders one CRD for each."""
    from spatialforge.crds.kinds import ALL_KINDS

    return {k.kind: k.crd_name for k in ALL_KINDS}


def shipped_kinds() -> set[str]:
    return set(shipped_crds())


def product_sources() -> Iterator[Path]:
    """Python files of the installed packages, hack/ and bench/ (not tests)."""
    for folder in [*folders(), "hack", "bench"]:
        yield from sorted((REPO / folder).rglob("*.py"))


SETTINGS_CLASS = re.compile(r"^class \w+\((?:\w+\.)?\w*Settings\w*\b", re.MULTILINE)


def settings_classes() -> list[type]:
    """Every pydantic-settings class the product defines (modules with a `class X(...Settings)`)."""
    from pydantic_settings import BaseSettings

    packages = folders()
    for path in product_sources():
        rel = path.relative_to(REPO)
        if rel.parts[0] not in packages or not SETTINGS_CLASS.search(path.read_text()):
            continue
        parts = [packages[rel.parts[0]], *rel.parts[1:-1]]
        if rel.stem != "__init__":
            parts.append(rel.stem)
        try:
            importlib.import_module(".".join(parts))
        except Exception as exc:  # a broken settings module cannot be checked against
            raise SystemExit(f"check_docs: cannot import {'.'.join(parts)}: {type(exc).__name__}: {exc}") from exc
    found: list[type] = []
    todo = list(BaseSettings.__subclasses__())
    while todo:
        cls = todo.pop()
        todo += cls.__subclasses__()
        if cls.__module__.startswith("spatialforge.") and cls not in found:
            found.append(cls)
    return found


def env_names_of(cls: Any) -> dict[str, Any]:
    """SPATIALFORGE_* env name -> the field's default, for one settings class."""
    prefix = str(cls.model_config.get("env_prefix") or "")
    out: dict[str, Any] = {}
    for name, info in cls.model_fields.items():
        alias = info.validation_alias or info.alias
        choices = getattr(alias, "choices", None)
        names = [a for a in choices if isinstance(a, str)] if choices else [alias] if isinstance(alias, str) else []
        names = names or [prefix + name]
        for env in names:
            if env.upper().startswith("SPATIALFORGE_"):
                out[env.upper()] = info.get_default(call_default_factory=True)
    return out


def code_env_names() -> set[str]:
    """SPATIALFORGE_* names (and f-string prefixes ending in `_`) that code, scripts or the chart use."""
    names: set[str] = set()
    for path in product_sources():
        text = path.read_text()
        names.update(CODE_ENV.findall(text))
        names.update(FSTRING_ENV.findall(text))
    for path in sorted((REPO / "hack").glob("*.sh")):
        names.update(a or b for a, b in SHELL_ENV.findall(path.read_text()))
    for path in sorted((REPO / "charts").rglob("templates/**/*")):
        if path.is_file():
            names.update(TEMPLATE_ENV.findall(path.read_text()))
    return names


def code_metrics() -> set[str]:
    """The Prometheus metric names the product defines."""
    return {name for path in product_sources() for name in CODE_METRIC.findall(path.read_text())}


def check_metrics(doc: Path, text: str, defined: set[str]) -> Iterator[Problem]:
    for m in DOC_METRIC.finditer(text):
        name = m.group(0)
        bases = {name} | {name[: -len(s)] for s in METRIC_SUFFIXES if name.endswith(s)}
        if not any(b in defined or f"{b}_total" in defined for b in bases):
            yield Problem(doc, _line(text, m.start()), f"metric {name} is defined nowhere in the product's code")


def shown(value: Any) -> str:
    """A default as the docs write it."""
    if isinstance(value, Enum):
        value = value.value
    if isinstance(value, bool):
        return str(value).lower()
    if value is None:
        return "unset"
    if isinstance(value, (dict, list)):
        return json.dumps(value, separators=(",", ":"))
    return str(value)


def values_default(key: str, values: dict[str, Any]) -> tuple[bool, Any]:
    node: Any = values
    for part in key.split("."):
        if not isinstance(node, dict) or part not in node:
            return False, None
        node = node[part]
    return True, node


# -- the checks ---------------------------------------------------------------------------------

def check_kinds(doc: Path, text: str, kinds: set[str]) -> Iterator[Problem]:
    for m in KIND_COUNT.finditer(text):
        word = m.group(1).lower()
        count = int(word) if word.isdigit() else NUMBERS[word]
        line = _line(text, m.start())
        if count != len(kinds):
            yield Problem(doc, line, f"{m.group(0)!r}: this repository ships {len(kinds)} kinds "
                                     f"({', '.join(sorted(kinds))})")
        rest = re.split(r"\.\s|\.$|;|\n\n", text[m.end():], maxsplit=1)[0]
        named = {n for n in re.findall(r"`([A-Z][A-Za-z]+)`", rest)}
        if named and named != kinds:
            yield Problem(doc, line, f"{m.group(0)!r} names {', '.join(sorted(named))}; the kinds are "
                                     f"{', '.join(sorted(kinds))}")


def check_crd_names(doc: Path, text: str, names: set[str]) -> Iterator[Problem]:
    for m in CRD_NAME.finditer(text):
        if m.group(0) not in names:
            yield Problem(doc, _line(text, m.start()), f"{m.group(0)} is no CRD of this repository "
                                                       f"({', '.join(sorted(names))})")


def check_env(doc: Path, text: str, known: set[str]) -> Iterator[Problem]:
    for m in DOC_ENV.finditer(text):
        name = m.group(0)
        if name.endswith(("*", "_")):
            prefix = name.rstrip("*")
            if not any(k.startswith(prefix) for k in known):
                yield Problem(doc, _line(text, m.start()), f"no setting or code name starts with {prefix}")
        elif name not in known:
            yield Problem(doc, _line(text, m.start()),
                          f"{name} is read by no settings class and named by no code, script or chart template")


def check_defaults(doc: Path, text: str, defaults: dict[str, set[str]], values: dict[str, Any]) -> Iterator[Problem]:
    for m in ENV_DEFAULT.finditer(text):
        name, stated = m.groups()
        if name not in defaults:
            yield Problem(doc, _line(text, m.start()), f"{name} is no settings field, so it has no default to state")
        elif stated not in defaults[name]:
            yield Problem(doc, _line(text, m.start()), f"{name}: the docs say default {stated!r}, the settings "
                                                       f"default is {' or '.join(sorted(map(repr, defaults[name])))}")
    for m in VALUES_DEFAULT.finditer(text):
        key, stated = m.groups()
        found, value = values_default(key, values)
        if not found:
            yield Problem(doc, _line(text, m.start()), f"{key} is not in {VALUES.relative_to(REPO)}")
        elif shown(value) != stated:
            yield Problem(doc, _line(text, m.start()),
                          f"{key}: the docs say values default {stated!r}, values.yaml has {shown(value)!r}")


def check_paths(doc: Path, text: str, roots: tuple[str, ...]) -> Iterator[Problem]:
    for m in BACKTICKED.finditer(text):
        token = m.group(1)
        if not token.startswith(roots) or any(ch in token for ch in "<>*{}$"):
            continue
        path = token.split("::")[0].split(":")[0].rstrip(",.")
        if FILE_EXT.search(path) and not (REPO / path).exists():
            yield Problem(doc, _line(text, m.start()), f"{path} does not exist")
    for m in MD_LINK.finditer(text):
        if not (doc.parent / m.group(1)).exists():
            yield Problem(doc, _line(text, m.start()), f"link target {m.group(1)} does not exist")


def module_file(module: str, packages: dict[str, str]) -> Path | None:
    """The file `python -m module` runs, or None when no installed folder holds it."""
    for folder, package in sorted(packages.items(), key=lambda fp: -len(fp[1])):
        if module == package or module.startswith(package + "."):
            rest = module[len(package):].lstrip(".").split(".") if module != package else []
            base = REPO.joinpath(folder, *rest)
            if (base / "__main__.py").is_file():
                return base / "__main__.py"
            return base.with_suffix(".py") if rest and base.with_suffix(".py").is_file() else None
    return None


def check_commands(doc: Path, text: str, packages: dict[str, str]) -> Iterator[Problem]:
    for m in PYTHON_M.finditer(text):
        path = module_file(m.group(1), packages)
        if path is None:
            yield Problem(doc, _line(text, m.start()), f"`python -m {m.group(1)}`: no such module")
        elif path.name != "__main__.py" and not MAIN_BLOCK.search(path.read_text()):
            yield Problem(doc, _line(text, m.start()), f"`python -m {m.group(1)}`: "
                                                       f"{path.relative_to(REPO)} does not run as a command")
    for m in PYTHON_SCRIPT.finditer(text):
        if not (REPO / m.group(1)).is_file():
            yield Problem(doc, _line(text, m.start()), f"`python {m.group(1)}`: no such script")


def runnable_benches() -> set[str]:
    return {p.name for p in (REPO / "bench").glob("*.py") if MAIN_BLOCK.search(p.read_text())}


def check_bench_list(doc: Path, text: str) -> Iterator[Problem]:
    m = BENCH_BULLET.search(text)
    if m is None:
        return
    listed = set(re.findall(r"`([\w]+\.py)`", m.group(0).split("\n", 1)[1].split(". ", 1)[0]))
    benches = runnable_benches()
    line = _line(text, m.start())
    for name in sorted(listed - benches):
        yield Problem(doc, line, f"bench/{name} is listed as a bench but has no `if __name__ == \"__main__\":` block")
    for name in sorted(benches - listed):
        yield Problem(doc, line, f"bench/{name} runs as a bench but is not listed")


def check(docs: Iterable[Path]) -> list[Problem]:
    """Every problem in `docs`."""
    problems: list[Problem] = []
    crds = shipped_crds()
    kinds = set(crds)
    defaults: dict[str, set[str]] = {}  # one name may be a field of two classes (SPATIALFORGE_NAMESPACE)
    for cls in settings_classes():
        for name, value in env_names_of(cls).items():
            defaults.setdefault(name, set()).add(shown(value))
    known = set(defaults) | code_env_names()
    values = yaml.safe_load(VALUES.read_text()) or {}
    metrics = code_metrics()
    packages = folders()
    roots = tuple(f"{f}/" for f in [*packages, "charts", "tests", "hack", "bench", "docs"])
    for doc in docs:
        text = doc.read_text()
        problems += check_kinds(doc, text, kinds)
        problems += check_crd_names(doc, text, set(crds.values()))
        problems += check_env(doc, text, known)
        problems += check_defaults(doc, text, defaults, values)
        problems += check_paths(doc, text, roots)
        problems += check_commands(doc, text, packages)
        problems += check_metrics(doc, text, metrics)
        problems += check_bench_list(doc, text)
    return sorted(problems, key=lambda p: (str(p.doc), p.line))


def main(argv: list[str]) -> int:
    docs = [Path(a) for a in argv] or [p for pattern in DOCS for p in sorted(REPO.glob(pattern))]
    missing = [d for d in docs if not d.is_file()]
    if missing:
        print(f"check_docs: no such document: {', '.join(map(str, missing))}", file=sys.stderr)
        return 2
    problems = check(docs)
    for p in problems:
        print(p)
    if problems:
        print(f"check_docs: {len(problems)} statement(s) contradict the code", file=sys.stderr)
        return 1
    print(f"check_docs: {len(docs)} document(s) agree with the code")
    return 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
