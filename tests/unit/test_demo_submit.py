"""The demo submits the samples through the REST API: moved into the tenant's prefix, they
still validate as the API's create bodies and keep the outputs a person looks at."""

from __future__ import annotations

import importlib.util
import sys

from spatialforge.crds.v1alpha1.depthbatch import DepthBatchSpec, DepthFormat
from spatialforge.crds.v1alpha1.reconstructionjob import ReconstructionFormat, ReconstructionJobSpec
from spatialforge.devcluster.plane import REPO

PREFIX = "s3://spatialforge-demo/tenants/demo/"


def _demo_submit():  # a script under hack/, imported by path as it runs
    sys.path.insert(0, str(REPO / "hack"))
    try:
        spec = importlib.util.spec_from_file_location("demo_submit", REPO / "hack" / "demo_submit.py")
        module = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(module)
        return module
    finally:
        sys.path.remove(str(REPO / "hack"))


def test_samples_move_into_the_tenant_prefix() -> None:
    demo = _demo_submit()
    uris = {"inputs": f"{PREFIX}inputs/abc/", "video": f"{PREFIX}inputs/def/walkthrough.mp4", "results": f"{PREFIX}results"}
    depth = DepthBatchSpec.model_validate(demo.sample_spec("depthbatch", **uris))
    recon = ReconstructionJobSpec.model_validate(demo.sample_spec("reconstructionjob", **uris))
    assert depth.inputs == [uris["inputs"]] and depth.output.uri == recon.output.uri == uris["results"]
    assert recon.input == uris["video"]
    assert DepthFormat.preview in depth.output.formats
    assert {ReconstructionFormat.mesh, ReconstructionFormat.floorplan} <= set(recon.output.formats)
    assert recon.output.web_mesh_triangles == 200_000
