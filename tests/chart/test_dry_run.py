"""The rendered chart is accepted by the real API server (server-side dry run)."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
import yaml

from spatialforge.devcluster.plane import Cluster
from tests.chart.conftest import CHART, Helm, ns, tenants_args

pytestmark = pytest.mark.integration

# Prometheus Operator kinds: their CRDs are not on the local plane (no registry reachable to
# fetch them), so the server cannot validate them; test_render.py checks their shape.
NOT_ON_PLANE = {"ServiceMonitor", "PrometheusRule"}


DRY_NAMESPACES = (ns("sf-dry"), ns("tenant-a"), ns("tenant-b"))


@pytest.fixture(scope="module")
def dry_namespaces(cluster: Cluster) -> Iterator[None]:
    for ns in DRY_NAMESPACES:
        cluster.apply({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": ns}})
    yield
    cluster.kubectl("delete", "namespace", *DRY_NAMESPACES, "--wait=false", check=False)


@pytest.mark.parametrize("values", [None, "full-values.yaml", "gpu-values.yaml", "minimal-values.yaml",
                                    "external-redis-values.yaml"])
@pytest.mark.usefixtures("dry_namespaces")
def test_server_side_dry_run(helm: Helm, cluster: Cluster, values: str | None) -> None:
    args = ["-f", str(CHART / "ci" / values), *tenants_args(*DRY_NAMESPACES[1:])] if values else []
    objs = [o for o in helm.render(*args, namespace=DRY_NAMESPACES[0], release="dry") if o["kind"] not in NOT_ON_PLANE]
    proc = cluster.kubectl("apply", "--dry-run=server", "-f", "-", input=yaml.safe_dump_all(objs), check=False)
    assert proc.returncode == 0, proc.stderr
    accepted = [line for line in proc.stdout.splitlines() if "(server dry run)" in line]
    assert len(accepted) == len(objs), proc.stdout
