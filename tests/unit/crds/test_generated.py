"""The committed CRD YAML is exactly what the models generate."""

from pathlib import Path

import pytest
import yaml
from pydantic import ValidationError

from spatialforge.crds.generate import CRD_DIR, render_all
from spatialforge.crds.kinds import KINDS, kind_of


def test_committed_crds_match_models() -> None:
    rendered = render_all()
    assert sorted(rendered) == sorted(p.name for p in CRD_DIR.glob("*.yaml"))
    for name, text in rendered.items():
        assert (CRD_DIR / name).read_text() == text, f"{name} is stale: run `spatialforge crds generate`"


def test_crd_schema_is_structural() -> None:
    forbidden = {"$ref", "$defs", "anyOf", "const", "title"}

    def walk(node: object, path: str) -> None:
        if isinstance(node, dict):
            assert not forbidden & node.keys(), f"{path} has {forbidden & node.keys()}"
            assert node.get("type") != "null", path
            assert node.get("additionalProperties") is not False, path
            for k, v in node.items():
                walk(v, f"{path}.{k}")
        elif isinstance(node, list):
            for i, v in enumerate(node):
                walk(v, f"{path}[{i}]")

    for text in render_all().values():
        crd = yaml.safe_load(text)
        walk(crd["spec"]["versions"][0]["schema"], "schema")


def test_crds_list_both_kinds_in_the_category() -> None:
    for text in render_all().values():
        names = yaml.safe_load(text)["spec"]["names"]
        assert names["categories"] == ["spatialforge"]
        assert names["shortNames"]


def samples(folder: Path) -> list[Path]:
    """The sample files; never empty, so a moved folder cannot make the tests pass vacuously."""
    found = sorted(folder.glob("*.yaml"))
    assert found, f"no samples in {folder}"
    return found


VALID = samples(CRD_DIR / "samples")
INVALID = samples(CRD_DIR / "samples" / "invalid")


def test_every_kind_has_a_valid_sample() -> None:
    assert {yaml.safe_load(p.read_text())["kind"] for p in VALID} == {k.kind for k in KINDS}


@pytest.mark.parametrize("path", VALID, ids=lambda p: p.stem)
def test_samples_validate_against_models(path: Path) -> None:
    doc = yaml.safe_load(path.read_text())
    kind_of(doc["kind"]).parse(doc)


@pytest.mark.parametrize("path", INVALID, ids=lambda p: p.stem)
def test_invalid_samples_fail_the_models_at_the_expected_field(path: Path) -> None:
    """The same field the API server names (first line `# expect: spec.x[0]`) fails the model."""
    expected = path.read_text().splitlines()[0].removeprefix("# expect:").strip()
    doc = yaml.safe_load(path.read_text())
    with pytest.raises(ValidationError) as err:
        kind_of(doc["kind"]).parse(doc)
    locs = [".".join(str(p) for p in e["loc"]) for e in err.value.errors()]
    want = expected.replace("[", ".").replace("]", "")
    assert any(loc.startswith(want) for loc in locs), (expected, locs)


def test_every_generated_copy_is_fresh() -> None:
    """What `make verify` checks: the CRDs (repo and chart), the policy, the chart's helpers."""
    from spatialforge.crds.generate import REPO, write

    stale = write(REPO, check=True)
    assert not stale, f"stale: {stale}; run `make crds`"


def test_verify_names_a_stale_copy(tmp_path: Path) -> None:
    """A hand edit of any one generated copy is found (checked on a scratch tree, not the repo)."""
    from spatialforge.crds.generate import REPO, outputs, write

    (tmp_path / "charts" / "spatialforge").mkdir(parents=True)
    (tmp_path / "charts" / "spatialforge" / "Chart.yaml").write_text("name: x\n")
    assert len(write(tmp_path)) == len(outputs(REPO))  # first write creates every copy
    assert write(tmp_path, check=True) == []
    for path in outputs(tmp_path):
        original = path.read_text()
        path.write_text(original.replace("spatialforge.io", "spatialforge.example", 1))
        assert write(tmp_path, check=True) == [path], path
        path.write_text(original)


def test_make_verify_runs_the_check() -> None:
    import subprocess

    from spatialforge.crds.generate import REPO

    proc = subprocess.run(["make", "-s", "verify"], cwd=REPO, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr


def test_chart_and_operator_share_the_runner_rules() -> None:
    """The chart renders spatialforge.crds.rbac.runner_rules; the operator imports it."""
    import inspect

    from spatialforge.crds.generate import render_chart_helpers
    from spatialforge.crds.rbac import runner_rules
    from spatialforge.operator import kube

    helpers = render_chart_helpers()
    body = helpers.split('define "spatialforge.runnerRules" -}}\n', 1)[1].split("{{- end -}}", 1)[0]
    assert yaml.safe_load(body) == runner_rules()
    source = inspect.getsource(kube)
    assert "runner_rules()" in source and '/status"' not in source, "the operator spells the runner's rules out"
