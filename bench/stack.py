"""What every front-end bench starts: Redis, stripe-mock and MinIO through hack/'s scripts, and
the front end's settings for them. bench/ is scripts, not a package: each bench puts its own
folder on sys.path and imports this."""

from __future__ import annotations

import os
import secrets
import subprocess
from pathlib import Path
from typing import Any

from spatialforge.devcluster.ports import free_port

HACK = Path(__file__).resolve().parents[1] / "hack"
SERVERS = (("redis.sh", "REDIS_PORT"), ("stripe-mock.sh", "STRIPE_MOCK_PORT"), ("minio.sh", "MINIO_PORT"))


def script(name: str, action: str, state: Path, **env: str) -> dict[str, str]:
    """Run hack/<name> <action> with its state under `state`; the variables it exports."""
    proc = subprocess.run(["bash", str(HACK / name), action], capture_output=True, text=True, timeout=120,
                          env={**os.environ, "SPATIALFORGE_STATE": str(state), **env})
    if proc.returncode != 0:
        raise SystemExit(f"hack/{name} {action} failed:\n{proc.stderr[-2000:]}")
    return {k: v for line in proc.stdout.splitlines() if line.startswith("export ")
            for k, _, v in [line[len("export "):].partition("=")]}


def start_servers(state: Path, started: list[str]) -> dict[str, str]:
    """Each server on a free port; its name goes into `started` as soon as it is up, so
    `stop_servers` stops exactly those even when a later one fails to start."""
    env: dict[str, str] = {}
    for name, port_var in SERVERS:
        env.update(script(name, "up", state, **{port_var: str(free_port())}))
        started.append(name)
    return env


def stop_servers(state: Path, started: list[str]) -> None:
    for name in reversed(started):
        script(name, "down", state)


def frontend_env(plane: Any, env: dict[str, str], bucket: str, **extra: str) -> dict[str, str]:
    """The front end's settings for these servers and this plane, with fresh secrets; `extra`
    adds or overrides settings by their full names."""
    return {
        "SPATIALFORGE_API_SECRET_KEY": secrets.token_urlsafe(48),
        "SPATIALFORGE_API_REDIS_URL": env["SPATIALFORGE_API_REDIS_URL"],
        "SPATIALFORGE_API_KUBECONFIG": str(plane.kubeconfig),
        "SPATIALFORGE_API_S3_ENDPOINT": env["SPATIALFORGE_S3_ENDPOINT"],
        "SPATIALFORGE_API_S3_ACCESS_KEY_ID": env["AWS_ACCESS_KEY_ID"],
        "SPATIALFORGE_API_S3_SECRET_ACCESS_KEY": env["AWS_SECRET_ACCESS_KEY"],
        "SPATIALFORGE_API_BUCKET": bucket,
        "SPATIALFORGE_API_STRIPE_API_KEY": "sk_test_" + secrets.token_hex(24),
        "SPATIALFORGE_API_STRIPE_WEBHOOK_SECRET": "whsec_" + secrets.token_hex(24),
        "SPATIALFORGE_API_STRIPE_API_BASE": env["SPATIALFORGE_API_STRIPE_API_BASE"],
        "SPATIALFORGE_API_NAMESPACE_PREFIX": "bench-",
        "SPATIALFORGE_API_METRICS_PORT": str(free_port()),
        **extra,
    }
