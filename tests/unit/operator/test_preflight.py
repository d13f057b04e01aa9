"""Start-up without the CRDs: one line naming them and how to install them, exit status 2."""

from __future__ import annotations

import asyncio

import pytest

from spatialforge.operator import __main__ as main_module
from spatialforge.operator import app
from spatialforge.operator.kube import Kube
from spatialforge.operator.settings import OperatorSettings


class Api:
    async def close(self) -> None:
        pass


def test_missing_crds_stop_the_operator_with_one_line(monkeypatch: pytest.MonkeyPatch,
                                                      capsys: pytest.CaptureFixture[str]) -> None:
    async def api_client(settings: OperatorSettings) -> Api:
        return Api()

    async def missing(self: Kube) -> list[str]:
        return ["depthbatches.spatialforge.io", "reconstructionjobs.spatialforge.io"]

    monkeypatch.setattr(app, "api_client", api_client)
    monkeypatch.setattr(Kube, "__init__", lambda self, api: None)
    monkeypatch.setattr(Kube, "missing_crds", missing)
    code = asyncio.run(main_module.run(OperatorSettings(health_port=0, metrics_port=0)))
    err = capsys.readouterr().err
    assert code == 2 and err.count("\n") == 1 and "Traceback" not in err
    assert "depthbatches.spatialforge.io, reconstructionjobs.spatialforge.io" in err
    assert "kubectl apply -f crds/" in err
