"""Run the operator: `python -m spatialforge.operator` or `spatialforge operator`.

With leader election on (the default), replicas compete for a Lease and only the holder
builds the operator (`app.build`: the cache filled, the parts wired) and runs Kopf. Health
(`/healthz`) answers on every replica; `/metrics` serves Prometheus. Everything it is told
comes from `OperatorSettings` (SPATIALFORGE_* variables), read once in `main`.
"""

from __future__ import annotations

import asyncio
import logging
import os
import signal
import socket
import sys

import kopf
from aiohttp import web
from prometheus_client import start_http_server

from spatialforge.operator import app, metrics
from spatialforge.operator import handlers  # noqa: F401  (registers the Kopf handlers)
from spatialforge.operator.kube import Kube
from spatialforge.operator.leader import LeaderElector
from spatialforge.operator.settings import OperatorSettings

log = logging.getLogger("spatialforge.operator")


async def _health_server(port: int, state: dict[str, str]) -> web.AppRunner:
    async def healthz(_: web.Request) -> web.Response:
        return web.json_response({"status": "ok", "role": state["role"]})

    app = web.Application()
    app.router.add_get("/healthz", healthz)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    await web.TCPSite(runner, "0.0.0.0", port).start()
    return runner


CRDS_HOW = "install them with `kubectl apply -f crds/` and start the operator again"


async def preflight(settings: OperatorSettings) -> str | None:
    """One line saying why the operator cannot start (missing CRDs), or None."""
    try:
        api = await app.api_client(settings)
    except Exception as exc:  # no kubeconfig and not in a pod
        return f"spatialforge operator: no Kubernetes credentials ({exc}); set KUBECONFIG or run in a pod"
    try:
        missing = await Kube(api).missing_crds()
    except Exception as exc:
        return f"spatialforge operator: cannot list CustomResourceDefinitions: {exc}".splitlines()[0]
    finally:
        await api.close()
    if missing:
        return f"spatialforge operator: CustomResourceDefinitions not installed: {', '.join(missing)}; {CRDS_HOW}"
    return None


async def run(settings: OperatorSettings) -> int:
    problem = await preflight(settings)
    if problem:
        print(problem, file=sys.stderr)
        return 2
    state = {"role": "starting"}
    health = await _health_server(settings.health_port, state) if settings.health_port else None
    if settings.metrics_port:
        start_http_server(settings.metrics_port)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    elector = None
    elector_api = None
    lost = asyncio.Event()
    tasks: list[asyncio.Task[object]] = []
    if settings.leader_election:
        api = elector_api = await app.api_client(settings)
        identity = settings.identity or f"{socket.gethostname()}-{os.getpid()}"
        elector = LeaderElector(Kube(api), settings.namespace, settings.lease_name, identity, settings.lease_duration_seconds)
        state["role"] = "standby"
        acquire = asyncio.create_task(elector.acquire())
        stopper = asyncio.create_task(stop.wait())
        await asyncio.wait({acquire, stopper}, return_when=asyncio.FIRST_COMPLETED)
        if stop.is_set():
            acquire.cancel()
            await api.close()
            return 0
        tasks.append(asyncio.create_task(elector.hold(lost)))
    state["role"] = "leader"
    metrics.IS_LEADER.set(1)
    kopf_stop: asyncio.Future[None] = loop.create_future()

    async def relay() -> None:
        waiters = [asyncio.create_task(stop.wait()), asyncio.create_task(lost.wait())]
        await asyncio.wait(waiters, return_when=asyncio.FIRST_COMPLETED)
        if not kopf_stop.done():
            kopf_stop.set_result(None)

    tasks.append(asyncio.create_task(relay()))
    api = None
    try:
        api = await app.api_client(settings)
        operator = await app.build(api, settings)  # the composition root, once this replica leads
        await kopf.operator(standalone=True, clusterwide=True, stop_flag=kopf_stop, memo=kopf.Memo(operator=operator))
    finally:
        if api is not None:
            await api.close()
        metrics.IS_LEADER.set(0)
        for t in tasks:
            t.cancel()
        if elector is not None and not lost.is_set():
            await elector.release()
        if elector_api is not None:
            await elector_api.close()
        if health is not None:
            await health.cleanup()
    if lost.is_set():
        log.error("lost the leader lease; exiting so a fresh replica can compete")
        return 1
    return 0


def main() -> int:
    settings = OperatorSettings()
    logging.basicConfig(level=settings.log_level, format="%(asctime)s %(levelname)s %(name)s %(message)s")
    logging.getLogger("kopf.objects").setLevel(logging.WARNING)
    return asyncio.run(run(settings))


if __name__ == "__main__":
    raise SystemExit(main())
