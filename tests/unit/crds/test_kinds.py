"""The kinds registry: one entry per kind, and the spec models' shard count and GPU demand."""

import pytest

from spatialforge.crds import DepthBatchSpec, ReconstructionJobSpec
from spatialforge.crds.generate import render_crd
from spatialforge.crds.kinds import BY_CODE, BY_PLURAL, DEPTH_BATCH, KINDS, RECONSTRUCTION_JOB, kind_of


def test_every_fact_is_unique_across_kinds() -> None:
    for attr in ("kind", "plural", "singular", "code"):
        values = [getattr(k, attr) for k in KINDS]
        assert len(set(values)) == len(values), attr
    shorts = [s for k in KINDS for s in k.short_names]
    assert len(set(shorts)) == len(shorts)
    assert set(BY_PLURAL) == {"depthbatches", "reconstructionjobs"} and set(BY_CODE) == {"db", "rj"}


def test_crd_names_come_from_the_registry() -> None:
    for k in KINDS:
        names = render_crd(k)["spec"]["names"]
        assert (names["kind"], names["plural"], names["singular"]) == (k.kind, k.plural, k.singular)
        assert names["shortNames"] == list(k.short_names)
        assert k.model.model_fields["kind"].default == k.kind
        assert k.model.model_fields["spec"].annotation is k.spec_model


def test_unknown_kind_names_the_known_ones() -> None:
    with pytest.raises(ValueError, match="DepthBatch, ReconstructionJob"):
        kind_of("Pod")
    assert kind_of("DepthBatch") is DEPTH_BATCH


@pytest.mark.parametrize("parallelism,gpus,demand", [(1, 1, 1), (4, 2, 8), (3, 0, 0), (64, 8, 512)])
def test_depthbatch_shards_and_demand(parallelism: int, gpus: int, demand: int) -> None:
    spec = DepthBatchSpec.model_validate({"inputs": ["s3://bucket/in/"], "output": {"uri": "s3://bucket/out"},
                                          "parallelism": parallelism, "placement": {"gpus": gpus}})
    assert spec.shards == parallelism and spec.gpu_demand == demand


@pytest.mark.parametrize("gpus", [0, 1, 8])
def test_reconstruction_is_one_shard(gpus: int) -> None:
    spec = ReconstructionJobSpec.model_validate({"input": "s3://bucket/v.mp4", "output": {"uri": "s3://bucket/out"},
                                                 "placement": {"gpus": gpus}})
    assert spec.shards == 1 and spec.gpu_demand == gpus
    parsed = RECONSTRUCTION_JOB.parse({"apiVersion": "spatialforge.io/v1alpha1", "kind": "ReconstructionJob",
                                       "metadata": {"name": "r"}, "spec": spec.model_dump(by_alias=True)})
    assert parsed.spec.gpu_demand == gpus  # type: ignore[attr-defined]
