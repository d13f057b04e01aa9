"""`spatialforge runner serve` / `python -m spatialforge.runner serve`: the depth server."""

from __future__ import annotations

import logging
import os
import signal
import sys
from typing import Any

import click

from spatialforge.crds.constants import ENV_DEPTH_BACKEND, ENV_DEVICE
from spatialforge.crds.v1alpha1.common import ModelSize, ModelVariant
from spatialforge.runner.serve.config import ServeSettings
from spatialforge.runner.settings import RunnerSettings


def _server_class() -> type:
    import uvicorn

    class DrainingServer(uvicorn.Server):
        """uvicorn re-raises SIGTERM after its graceful shutdown (the process then dies by the
        signal); a server that drained cleanly exits 0 instead."""

        def handle_exit(self, sig: int, frame: Any) -> None:
            super().handle_exit(sig, frame)
            if sig == signal.SIGTERM and sig in getattr(self, "_captured_signals", []):
                self._captured_signals.remove(sig)

    return DrainingServer


def run_server(serve: ServeSettings, runner: RunnerSettings) -> int:
    """Serve until SIGTERM/SIGINT (in-flight requests drain first); 1 when the model cannot load."""
    import uvicorn

    from spatialforge.runner.serve.app import create_app

    failures: list[str] = []

    def on_fatal(reason: str) -> None:
        failures.append(reason)
        server.should_exit = True

    app = create_app(serve, runner, on_fatal=on_fatal)
    config = uvicorn.Config(
        app, host=serve.host, port=serve.port, log_level="info", access_log=False, lifespan="on",
        timeout_graceful_shutdown=max(serve.drain_seconds, 0.001),  # None would wait without bound
    )
    server = _server_class()(config)
    server.run()
    return 1 if failures else 0


@click.command(name="serve")
@click.option("--host", default=None, help="Listen address [env SPATIALFORGE_SERVE_HOST; 0.0.0.0].")
@click.option("--port", type=int, default=None, help="Port [env SPATIALFORGE_SERVE_PORT; 8080].")
@click.option("--size", "model_size", type=click.Choice([s.value for s in ModelSize]), default=None, help="Checkpoint size [small].")
@click.option("--variant", "model_variant", type=click.Choice([v.value for v in ModelVariant]), default=None,
              help="Checkpoint variant [relative].")
@click.option("--max-batch", type=int, default=None, help="Largest batch [8].")
@click.option("--max-wait-ms", type=float, default=None, help="Longest wait for a batch to fill [10].")
@click.option("--max-queue", type=int, default=None, help="Requests held at once before 503 [64].")
@click.option("--decode-workers", type=int, default=None, help="Decode/encode threads [2].")
@click.option("--drain-seconds", type=float, default=None, help="On SIGTERM, time allowed for in-flight requests [30].")
@click.option("--device", default=None, help="auto, cpu, cuda or cuda:N [env SPATIALFORGE_DEVICE].")
@click.option("--backend", default=None, help="auto, torch, onnxruntime, openvino [env SPATIALFORGE_DEPTH_BACKEND].")
def serve_command(device: str | None, backend: str | None, **options: object) -> None:
    """Serve depth over HTTP: the model loads once, requests are batched dynamically.

    POST /v1/depth with the image as the body; GET /readyz, /healthz, /metrics.
    Every option also reads SPATIALFORGE_SERVE_<NAME>; model, device and backend settings
    are the runner's (runner/README.md).
    """
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    env = dict(os.environ)
    if device:
        env[ENV_DEVICE] = device
    if backend:
        env[ENV_DEPTH_BACKEND] = backend
    try:
        serve = ServeSettings.from_env(env, **options)
        runner = RunnerSettings.from_env(env)
    except ValueError as exc:  # pydantic's ValidationError: name the setting, no traceback
        raise click.UsageError(" ".join(str(exc).split())) from exc
    sys.exit(run_server(serve, runner))
