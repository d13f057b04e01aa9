"""The committed CRD YAML is exactly what the models generate."""

from pathlib import Path

import yaml

from spatialforge.crds.generate import CRD_DIR, render_all


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


def test_samples_validate_against_models() -> None:
    from spatialforge.crds import DepthBatch, ReconstructionJob

    models = {"DepthBatch": DepthBatch, "ReconstructionJob": ReconstructionJob}
    for path in sorted((CRD_DIR / "samples").glob("*.yaml")):
        doc = yaml.safe_load(path.read_text())
        models[doc["kind"]].model_validate(doc)
