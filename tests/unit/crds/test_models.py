import pytest
from pydantic import ValidationError

from spatialforge.crds import DepthBatchSpec, ReconstructionJobSpec
from spatialforge.crds.layout import manifest_uri, shard_of
from spatialforge.crds.v1alpha1.common import ALLOW_LOCAL_FILES
from spatialforge.crds.v1alpha1.reconstructionjob import QualityPreset


def spec(**kw: object) -> dict:
    return {"inputs": ["s3://bucket/in/"], "output": {"uri": "s3://bucket/out"}, **kw}


def test_defaults_and_camel_case() -> None:
    s = DepthBatchSpec.model_validate(spec(batchSize=8))
    assert s.batch_size == 8 and s.placement.gpus == 1 and s.model.size.value == "small"
    assert "batchSize" in s.model_dump(by_alias=True)


def test_file_uris_only_with_local_context() -> None:
    with pytest.raises(ValidationError, match="s3://"):
        DepthBatchSpec.model_validate(spec(inputs=["file:///tmp/a.jpg"]))
    ok = DepthBatchSpec.model_validate(spec(inputs=["file:///tmp/a.jpg"]), context={ALLOW_LOCAL_FILES: True})
    assert ok.inputs == ["file:///tmp/a.jpg"]


@pytest.mark.parametrize("field,value", [("parallelism", 0), ("parallelism", 65), ("backoffLimit", 11),
                                         ("activeDeadlineSeconds", 10)])
def test_ranges(field: str, value: int) -> None:
    with pytest.raises(ValidationError) as err:
        DepthBatchSpec.model_validate(spec(**{field: value}))
    assert field in str(err.value)


def test_unknown_field_rejected() -> None:
    with pytest.raises(ValidationError, match="colour"):
        DepthBatchSpec.model_validate(spec(colour="red"))


def test_presets_cap_keyframes() -> None:
    assert [p.max_keyframes for p in QualityPreset] == [30, 100, 200]
    r = ReconstructionJobSpec.model_validate({"input": "s3://bkt/v.mp4", "output": {"uri": "s3://bkt/o"}})
    assert r.model.variant.value == "metric-indoor" and r.quality is QualityPreset.standard


def test_shards_are_disjoint_and_cover() -> None:
    items = [f"s3://b/{i}.jpg" for i in range(23)]
    shards = [shard_of(items, i, 4) for i in range(4)]
    assert sorted(sum(shards, [])) == sorted(items)
    assert len(set(sum(shards, []))) == len(items)


def test_manifest_layout() -> None:
    assert manifest_uri("s3://b/out/", "ns", "job", 2) == "s3://b/out/ns/job/shard-00002/manifest.json"


def test_operator_folder_never_shadows_stdlib() -> None:
    import importlib
    import operator

    assert operator.__file__.endswith("/operator.py") and "site-packages" not in operator.__file__
    assert importlib.import_module("spatialforge.operator").__name__ == "spatialforge.operator"
