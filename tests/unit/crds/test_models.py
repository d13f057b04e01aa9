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


BAD_URIS = [
    ("s3://bucket/../../other", "'.' or '..'"),
    ("s3://bucket/a/..", "'.' or '..'"),
    ("s3://bucket/./a", "'.' or '..'"),
    ("s3://bucket/a/./", "'.' or '..'"),
    ("s3://bucket//..//x", "'.' or '..'"),
    ("s3://bucket/a\nb", "control characters"),
    ("s3://bucket/a\x00", "control characters"),
    ("s3://bucket/a\x7f", "control characters"),
    ("s3://bucket/a\x85", "control characters"),
    ("s3://bucket/a\n", "control characters"),
    ("s3://Bucket/a", "valid bucket name"),
    ("http://bucket/a", "s3://"),
]
GOOD_URIS = ["s3://bucket", "s3://bucket/", "s3://bucket/in/", "s3://bucket/.hidden/a.jpg", "s3://bucket/a..b/c",
             "s3://bucket/.../x", "s3://bucket/..x", "s3://bucket/a//b", "s3://my.bucket-1/ü/ß.png"]


@pytest.mark.parametrize("uri,message", BAD_URIS)
def test_bad_uris_refused_in_every_uri_field_with_the_field_named(uri: str, message: str) -> None:
    for field, body in (("inputs.0", spec(inputs=[uri])), ("output.uri", spec(output={"uri": uri}))):
        with pytest.raises(ValidationError) as err:
            DepthBatchSpec.model_validate(body)
        assert err.value.errors()[0]["loc"] == tuple(int(p) if p.isdigit() else p for p in field.split("."))
        assert message in str(err.value)
    with pytest.raises(ValidationError) as err:
        ReconstructionJobSpec.model_validate({"input": uri, "output": {"uri": "s3://bucket/out"}})
    assert err.value.errors()[0]["loc"] == ("input",) and message in str(err.value)


@pytest.mark.parametrize("uri", [u for u, _ in BAD_URIS] + GOOD_URIS)
def test_crd_pattern_agrees_with_the_validator(uri: str) -> None:
    """The pattern the API server enforces (RE2; this one is also valid Python) accepts exactly
    what the model accepts."""
    import re

    from spatialforge.crds.v1alpha1.common import S3_URI_PATTERN

    try:
        DepthBatchSpec.model_validate(spec(inputs=[uri]))
        valid = True
    except ValidationError:
        valid = False
    assert valid == (uri in GOOD_URIS)
    assert S3_URI_PATTERN.endswith("$")
    re2_like = S3_URI_PATTERN[:-1] + r"\Z"  # RE2's "$" is end of text; Python's also matches before a final "\n"
    assert (re.search(re2_like, uri) is not None) == valid


def test_local_file_uris_refuse_dot_segments_too() -> None:
    with pytest.raises(ValidationError, match="'.' or '..'"):
        DepthBatchSpec.model_validate(spec(inputs=["file:///tmp/../etc/x.jpg"]), context={ALLOW_LOCAL_FILES: True})


def test_uri_length_limited() -> None:
    with pytest.raises(ValidationError, match="1024"):
        DepthBatchSpec.model_validate(spec(inputs=["s3://bucket/" + "a" * 1100]))


def test_on_invalid_image_defaults_to_fail() -> None:
    assert DepthBatchSpec.model_validate(spec()).on_invalid_image.value == "Fail"
    assert DepthBatchSpec.model_validate(spec(onInvalidImage="Skip")).on_invalid_image.value == "Skip"
    with pytest.raises(ValidationError, match="onInvalidImage"):
        DepthBatchSpec.model_validate(spec(onInvalidImage="Ignore"))
