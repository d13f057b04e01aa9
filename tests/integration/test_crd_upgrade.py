"""Tighter CRD validation must not strand objects stored under an older, looser schema.

Kubernetes' CRD validation ratcheting (GA and on by default since 1.33; the plane runs the
version in hack/lib.sh) lets an update through when the fields that fail the new schema are
unchanged. Proven here with today's CRD against the one before the URI and shard-map limits,
both under a scratch API group so the session's own CRDs are never touched."""

from __future__ import annotations

import json
from collections.abc import Iterator
from typing import Any

import pytest
import yaml

from spatialforge.crds.constants import GROUP
from spatialforge.crds.generate import render_crd
from spatialforge.crds.kinds import DEPTH_BATCH
from spatialforge.devcluster.plane import Cluster

pytestmark = pytest.mark.integration
SCRATCH_GROUP = "upgrade-test.spatialforge.io"
CRD_NAME = f"{DEPTH_BATCH.plural}.{SCRATCH_GROUP}"
# What the schema accepted before the URI rules were tightened (crds/v1alpha1/common.py history).
OLD_URI_PATTERN = r"^s3://[a-z0-9][a-z0-9.-]{1,61}[a-z0-9](/.*)?$"


def _scratch(crd: dict[str, Any]) -> dict[str, Any]:
    crd = json.loads(json.dumps(crd).replace(f'"{GROUP}"', f'"{SCRATCH_GROUP}"'))
    crd["metadata"]["name"] = CRD_NAME
    # Out of the `spatialforge` category and without short names: kubectl's discovery cache would
    # otherwise resolve `kubectl get spatialforge` or `db` to this scratch kind after it is deleted.
    names = crd["spec"]["names"]
    names.pop("categories", None)
    names.pop("shortNames", None)
    return crd


def _loosen(node: Any) -> Any:
    """The older schema: the old URI pattern, no cap on the shard map."""
    if isinstance(node, dict):
        out = {k: _loosen(v) for k, v in node.items() if k != "maxProperties"}
        if isinstance(out.get("pattern"), str) and out["pattern"].startswith("^s3://"):
            out["pattern"] = OLD_URI_PATTERN
        return out
    if isinstance(node, list):
        return [_loosen(v) for v in node]
    return node


def _apply_crd(cluster: Cluster, crd: dict[str, Any]) -> None:
    cluster.kubectl("apply", "--server-side", "--force-conflicts", "-f", "-", input=yaml.safe_dump(crd))
    cluster.kubectl("wait", "--for=condition=Established", f"crd/{CRD_NAME}", "--timeout=30s")


@pytest.fixture
def scratch_crd(cluster: Cluster) -> Iterator[tuple[dict[str, Any], dict[str, Any]]]:
    new = _scratch(render_crd(DEPTH_BATCH))
    old = _loosen(new)
    assert old != new
    yield old, new
    cluster.kubectl("delete", "crd", CRD_NAME, "--ignore-not-found", "--wait=false", check=False)


def _resource(name: str, inputs: list[str]) -> dict[str, Any]:
    return {"apiVersion": f"{SCRATCH_GROUP}/v1alpha1", "kind": DEPTH_BATCH.kind, "metadata": {"name": name},
            "spec": {"inputs": inputs, "output": {"uri": "s3://bucket/out/../elsewhere"}, "suspend": True}}


def test_objects_valid_under_the_old_schema_keep_working(cluster: Cluster, namespace: str,
                                                          scratch_crd: tuple[dict[str, Any], dict[str, Any]]) -> None:
    old, new = scratch_crd
    _apply_crd(cluster, old)
    resource = f"{DEPTH_BATCH.plural}.{SCRATCH_GROUP}"
    cluster.apply(_resource("legacy", ["s3://bucket/in/../../other/"]), namespace)
    shards = {str(i): {"done": 1, "total": 1} for i in range(70)}  # more than today's cap of 64
    cluster.kubectl("patch", resource, "legacy", "-n", namespace, "--subresource=status", "--type=merge",
                    "-p", json.dumps({"status": {"phase": "Running", "progress": {"shards": shards}}}))

    _apply_crd(cluster, new)
    # The new schema is in force for new objects and for changed fields...
    proc = cluster.kubectl("apply", "-n", namespace, "-f", "-", check=False,
                           input=yaml.safe_dump(_resource("fresh", ["s3://bucket/in/../x/"])))
    assert proc.returncode != 0 and "spec.inputs[0]" in proc.stderr, proc.stderr
    proc = cluster.kubectl("patch", resource, "legacy", "-n", namespace, "--subresource=status", "--type=merge",
                           "-p", json.dumps({"status": {"progress": {"shards": {"70": {"done": 0}}}}}), check=False)
    assert proc.returncode != 0 and "status.progress.shards" in proc.stderr, proc.stderr
    # ...while the stored object, still invalid under it, can have its status, labels and
    # mutable spec fields updated as before.
    cluster.kubectl("patch", resource, "legacy", "-n", namespace, "--subresource=status", "--type=merge",
                    "-p", json.dumps({"status": {"phase": "Succeeded", "reason": "Completed"}}))
    cluster.kubectl("label", resource, "legacy", "-n", namespace, "tier=gold")
    cluster.kubectl("patch", resource, "legacy", "-n", namespace, "--type=merge",
                    "-p", json.dumps({"spec": {"suspend": False, "priority": 3}}))
    got = json.loads(cluster.kubectl("get", resource, "legacy", "-n", namespace, "-o", "json").stdout)
    assert got["status"]["phase"] == "Succeeded" and got["metadata"]["labels"]["tier"] == "gold"
    assert got["spec"]["priority"] == 3 and got["spec"]["inputs"] == ["s3://bucket/in/../../other/"]
    assert len(got["status"]["progress"]["shards"]) == 70
