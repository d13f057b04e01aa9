"""`apiserver.console.enabled` reaches the front end's Settings (console_enabled) both ways."""

from __future__ import annotations

import pytest

from spatialforge.apiserver.core.config import Settings
from tests.chart.conftest import Helm, find


@pytest.mark.parametrize(("sets", "expected"), [((), True), (("--set", "apiserver.console.enabled=false"), False)])
def test_console_setting_reaches_the_front_end(helm: Helm, sets: tuple[str, ...], expected: bool,
                                               monkeypatch: pytest.MonkeyPatch) -> None:
    c = find(helm.render(*sets), "Deployment", "-apiserver")["spec"]["template"]["spec"]["containers"][0]
    env = {e["name"]: e["value"] for e in c["env"] if "value" in e}
    assert env["SPATIALFORGE_API_CONSOLE_ENABLED"] == str(expected).lower()
    monkeypatch.setenv("SPATIALFORGE_API_CONSOLE_ENABLED", env["SPATIALFORGE_API_CONSOLE_ENABLED"])
    assert Settings(dev_mode=True).console_enabled is expected
