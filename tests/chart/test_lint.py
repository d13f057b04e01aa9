"""helm lint (strict) with the default values and every CI values file."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.chart.conftest import CHART, CI_VALUES, Helm


def test_lint_default(helm: Helm) -> None:
    helm.run("lint", "--strict", str(CHART), "--kube-version", "1.36.3")


@pytest.mark.parametrize("values", CI_VALUES, ids=lambda p: p.name)
def test_lint_ci_values(helm: Helm, values: Path) -> None:
    helm.run("lint", "--strict", str(CHART), "--kube-version", "1.36.3", "-f", str(values))
