"""The chart's crds/ are exactly what the models generate (the repo's crds/*.yaml)."""

from __future__ import annotations

from spatialforge.devcluster.plane import REPO
from tests.chart.conftest import CHART


def test_chart_crds_equal_repo_crds() -> None:
    repo = {p.name: p.read_bytes() for p in (REPO / "crds").glob("spatialforge.io_*.yaml")}
    chart = {p.name: p.read_bytes() for p in (CHART / "crds").glob("*.yaml")}
    assert repo, "no generated CRDs in crds/ (python -m spatialforge.crds.generate)"
    assert chart.keys() == repo.keys(), "chart crds/ and repo crds/ hold different files"
    stale = [name for name in repo if chart[name] != repo[name]]
    assert not stale, (f"charts/spatialforge/crds/ is stale for {stale}: copy them with "
                       "`cp crds/spatialforge.io_*.yaml charts/spatialforge/crds/` (and see hack/crds-upgrade.sh)")
