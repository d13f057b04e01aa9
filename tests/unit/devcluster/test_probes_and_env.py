"""The dev node agent's readiness probes and container env, as a kubelet would do them (no
API server: a fake CoreV1 client and a local HTTP server)."""

from __future__ import annotations

import asyncio
import base64
import http.server
import threading
from collections.abc import Iterator
from types import SimpleNamespace

import pytest
from kubernetes_asyncio.client.rest import ApiException

from spatialforge.devcluster import probes, processes


@pytest.fixture
def target() -> Iterator[tuple[int, dict[str, int]]]:
    """An HTTP server whose /readyz answers state["code"] (and anything else 200)."""
    state = {"code": 503}

    class Handler(http.server.BaseHTTPRequestHandler):
        def do_GET(self) -> None:  # noqa: N802
            self.send_response(state["code"] if self.path == "/readyz" else 200)
            self.end_headers()

        def log_message(self, *args: object) -> None:
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    yield server.server_address[1], state
    server.shutdown()


def test_readiness_follows_the_probe_after_the_startup_probe(target) -> None:
    port, state = target
    container = {"ports": [{"name": "http", "containerPort": 8000}],
                 "startupProbe": {"httpGet": {"path": "/health", "port": "http"}, "periodSeconds": 0.1},
                 "readinessProbe": {"httpGet": {"path": "/readyz", "port": "http"}, "periodSeconds": 0.1,
                                    "failureThreshold": 2}}

    async def go() -> list[bool]:
        seen: list[bool] = []

        async def on(ready: bool) -> None:
            seen.append(ready)

        async def until(expected: list[bool]) -> None:
            for _ in range(50):
                if seen == expected:
                    return
                await asyncio.sleep(0.05)
            raise AssertionError(f"readiness transitions {seen}, expected {expected}")

        task = asyncio.create_task(probes.readiness(container, {8000: port}, on))
        await until([False])
        state["code"] = 200
        await until([False, True])
        state["code"] = 500
        await until([False, True, False])
        task.cancel()
        seen.clear()
        await probes.readiness({"name": "no-probe"}, {}, on)  # no readiness probe: ready at start
        return seen

    assert asyncio.run(go()) == [True]


class FakeCore:
    """Secret `s` with key `a`; nothing else exists."""

    async def read_namespaced_secret(self, name: str, namespace: str) -> SimpleNamespace:
        if name != "s":
            raise ApiException(status=404)
        return SimpleNamespace(data={"a": base64.b64encode(b"A").decode()})

    async def read_namespaced_config_map(self, name: str, namespace: str) -> SimpleNamespace:
        raise ApiException(status=404)


POD = {"metadata": {"namespace": "n", "name": "p"}, "spec": {}}


def test_env_expands_references_and_honours_optional_sources() -> None:
    container = {"env": [
        {"name": "X", "value": "$(KUBECONFIG)/$(A)/$(NOPE)/$$(KUBECONFIG)"},
        {"name": "A", "valueFrom": {"secretKeyRef": {"name": "s", "key": "a"}}},
        {"name": "Y", "value": "$(A)"},
        {"name": "O", "valueFrom": {"secretKeyRef": {"name": "s", "key": "zz", "optional": True}}},
        {"name": "O2", "valueFrom": {"secretKeyRef": {"name": "gone", "key": "zz", "optional": True}}},
    ], "envFrom": [{"configMapRef": {"name": "cm", "optional": True}}]}
    env = asyncio.run(processes._env(FakeCore(), POD, container, {"KUBECONFIG": "/k"}))
    # As a kubelet: a reference to a variable defined later, or never, stays as written; $$ escapes.
    assert env == {"X": "/k/$(A)/$(NOPE)/$(KUBECONFIG)", "A": "A", "Y": "A"}


@pytest.mark.parametrize("source", [{"secretKeyRef": {"name": "s", "key": "zz"}},
                                    {"secretKeyRef": {"name": "gone", "key": "a"}}])
def test_a_missing_required_source_is_a_config_error(source) -> None:
    with pytest.raises(processes.ConfigError):
        asyncio.run(processes._env(FakeCore(), POD, {"env": [{"name": "B", "valueFrom": source}]}))
