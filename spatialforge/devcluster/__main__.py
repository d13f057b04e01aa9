"""python -m spatialforge.devcluster --nodes N --gpus G [--mode simulate|process]"""

from __future__ import annotations

import argparse
import asyncio
import logging
import os
import signal
from pathlib import Path

from kubernetes_asyncio import config

from spatialforge.devcluster import podnet
from spatialforge.devcluster.behaviour import Behaviour
from spatialforge.devcluster.nodes import keep_ready
from spatialforge.devcluster.pods import Kubelet
from spatialforge.kubeclient import tuned


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="spatialforge-devcluster", description=__doc__)
    p.add_argument("--nodes", type=int, default=2)
    p.add_argument("--gpus", type=int, default=4, help="nvidia.com/gpu per node")
    p.add_argument("--prefix", default="gpu-node")
    p.add_argument("--mode", choices=["simulate", "process"], default="simulate",
                   help="what a pod with no behaviour rule does")
    p.add_argument("--seconds", type=float, default=1.0, help="simulated run time")
    p.add_argument("--kubeconfig", default=os.environ.get("KUBECONFIG"))
    return p.parse_args(argv)


async def amain(args: argparse.Namespace) -> None:
    api = tuned(await config.new_client_from_config(config_file=args.kubeconfig))
    api.configuration.connection_pool_maxsize = 64  # type: ignore[attr-defined]
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    podnet.configure()  # pod IPs that EndpointSlices accept, when this host lets us add them
    names = [f"{args.prefix}-{i}" for i in range(args.nodes)]
    state = Path(os.environ.get("SPATIALFORGE_STATE", ".local")) / "devcluster"
    kubelet = Kubelet(api, names, Behaviour(mode=args.mode, seconds=args.seconds), state)
    tasks = [asyncio.create_task(keep_ready(api, names, args.gpus, stop)), asyncio.create_task(kubelet.run(stop))]
    await stop.wait()
    for t in tasks + list(kubelet.tasks.values()):
        t.cancel()
    await asyncio.gather(*tasks, *kubelet.tasks.values(), return_exceptions=True)
    await api.close()


def main(argv: list[str] | None = None) -> None:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s %(message)s")
    asyncio.run(amain(parse_args(argv)))


if __name__ == "__main__":
    main()
