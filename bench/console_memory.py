"""What the console adds to the front end's memory: RSS with the console enabled vs disabled.

    SPATIALFORGE_TEST_STATE=.local/bench-console python bench/console_memory.py [--loads N]

The stack as bench/api_load.py starts it (local control plane, Redis, MinIO, stripe-mock), then
the front end as its own process (one worker) twice: SPATIALFORGE_API_CONSOLE_ENABLED=true, then
false. Each time: RSS once ready, then every console file (the page, its modules, its stylesheet;
404s when disabled) is fetched N times, plus N /v1/plan calls so both runs do API work, and RSS
again (the process and any children, from /proc). Final line: JSON with the RSS in MiB and the
difference the console makes.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
import uuid
from pathlib import Path

import aiohttp

sys.path.insert(0, str(Path(__file__).parent))  # bench/ is scripts, not a package: share api_load's stack helpers
from api_load import BENCH_STATE, serve, tenant_key, wait_ready
from stack import frontend_env, start_servers, stop_servers

from spatialforge.devcluster.plane import start_cluster
from spatialforge.devcluster.ports import free_port

BUCKET = "sf-bench"
STATIC = Path(__file__).resolve().parent.parent / "apiserver" / "console" / "static"
PAGES = ["/console/", *(f"/console/{p.name}" for p in sorted(STATIC.iterdir()) if p.is_file() and p.name != "index.html")]


def rss_mib(pid: int) -> float:
    """Resident set size of `pid` and its descendants, MiB (VmRSS from /proc)."""
    total, todo = 0, [pid]
    while todo:
        p = todo.pop()
        try:
            status = Path(f"/proc/{p}/status").read_text()
            children = Path(f"/proc/{p}/task/{p}/children").read_text().split()
        except FileNotFoundError:
            continue
        total += next(int(line.split()[1]) for line in status.splitlines() if line.startswith("VmRSS:"))
        todo += [int(c) for c in children]
    return total / 1024


async def one_run(api_env: dict[str, str], key: str, enabled: bool, loads: int) -> dict[str, float | int]:
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    proc = serve({**api_env, "SPATIALFORGE_API_CONSOLE_ENABLED": "true" if enabled else "false"}, port, 1)
    try:
        await wait_ready(url, proc)
        await asyncio.sleep(1)  # let start-up work (caches, watches) settle
        ready = rss_mib(proc.pid)
        served = 0
        async with aiohttp.ClientSession(base_url=url, headers={"X-API-Key": key}) as session:
            for _ in range(loads):
                for page in PAGES:
                    async with session.get(page) as resp:
                        await resp.read()
                        assert resp.status == (200 if enabled else 404), (page, resp.status)
                        served += resp.status == 200
                async with session.get("/v1/plan") as resp:
                    assert resp.status == 200, await resp.text()
        await asyncio.sleep(1)
        return {"rss_ready_mib": round(ready, 1), "rss_after_mib": round(rss_mib(proc.pid), 1), "files_served": served}
    finally:
        proc.terminate()
        proc.wait(30)


async def main(args: argparse.Namespace) -> dict:
    BENCH_STATE.mkdir(parents=True, exist_ok=True)
    plane, _ = start_cluster()
    started: list[str] = []
    try:
        env = start_servers(BENCH_STATE, started)
        api_env = frontend_env(plane, env, BUCKET)
        key = await tenant_key(api_env, f"t{uuid.uuid4().hex[:8]}")
        on = await one_run(api_env, key, True, args.loads)
        off = await one_run(api_env, key, False, args.loads)
        return {"loads": args.loads, "files": len(PAGES), "enabled": on, "disabled": off,
                "added_after_mib": round(on["rss_after_mib"] - off["rss_after_mib"], 1),
                "added_ready_mib": round(on["rss_ready_mib"] - off["rss_ready_mib"], 1)}
    finally:
        stop_servers(BENCH_STATE, started)


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--loads", type=int, default=200, help="times every console file is fetched")
    print(json.dumps(asyncio.run(main(parser.parse_args()))))
