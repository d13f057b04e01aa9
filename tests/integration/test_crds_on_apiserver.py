"""The generated CRDs on a real API server: validation, CEL immutability, printer columns."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import yaml

from spatialforge.devcluster.plane import REPO, Cluster
from tests.factories import depth_batch

pytestmark = pytest.mark.integration
INVALID = sorted((REPO / "crds" / "samples" / "invalid").glob("*.yaml"))


@pytest.mark.parametrize("path", INVALID, ids=lambda p: p.stem)
def test_invalid_samples_are_rejected_naming_the_field(cluster: Cluster, namespace: str, path: Path) -> None:
    expected = path.read_text().splitlines()[0].removeprefix("# expect:").strip()
    proc = cluster.kubectl("apply", "-n", namespace, "-f", str(path), check=False)
    assert proc.returncode != 0, f"{path.name} was accepted"
    assert expected in proc.stderr, proc.stderr


@pytest.mark.parametrize("path", sorted((REPO / "crds" / "samples").glob("*.yaml")), ids=lambda p: p.stem)
def test_valid_samples_pass_server_side_dry_run(cluster: Cluster, namespace: str, path: Path) -> None:
    cluster.kubectl("apply", "--dry-run=server", "-n", namespace, "-f", str(path))


def test_unknown_fields_are_refused(cluster: Cluster, namespace: str) -> None:
    body = depth_batch("unknown-field")
    body["spec"]["colour"] = "red"
    proc = cluster.kubectl("apply", "-n", namespace, "-f", "-", input=yaml.safe_dump(body), check=False)
    assert proc.returncode != 0 and "colour" in proc.stderr


def test_inputs_are_immutable_but_suspend_is_not(cluster: Cluster, namespace: str) -> None:
    cluster.apply(depth_batch("immutable", suspend=True), namespace)
    proc = cluster.kubectl("patch", "depthbatch", "immutable", "-n", namespace, "--type=merge",
                           "-p", json.dumps({"spec": {"inputs": ["s3://other-bucket/x.jpg"]}}), check=False)
    assert proc.returncode != 0 and "inputs is immutable" in proc.stderr
    cluster.kubectl("patch", "depthbatch", "immutable", "-n", namespace, "--type=merge",
                    "-p", json.dumps({"spec": {"suspend": True, "priority": 5}}))


def test_category_lists_both_kinds_with_printer_columns(cluster: Cluster, namespace: str) -> None:
    from tests.factories import reconstruction_job

    cluster.apply(depth_batch("listed", suspend=True), namespace)
    cluster.apply(reconstruction_job("listed-too", suspend=True), namespace)
    out = cluster.kubectl("get", "spatialforge", "-n", namespace).stdout
    assert "depthbatch.spatialforge.io/listed" in out and "reconstructionjob.spatialforge.io/listed-too" in out
    for column in ("PHASE", "PROGRESS", "INPUT", "AGE"):
        assert column in out
    assert "s3://spatialforge-test/inputs/walk.mp4" in out
    short = cluster.kubectl("get", "db,rj", "-n", namespace, "-o", "name").stdout
    assert "depthbatch.spatialforge.io/listed" in short
