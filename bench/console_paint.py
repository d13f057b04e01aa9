"""The console with many jobs in the account: first paint, and the jobs list shown.

    SPATIALFORGE_TEST_STATE=.local/bench-console python bench/console_paint.py [--jobs N] [--loads L]

The real stack as bench/api_load.py starts it (local control plane, Redis, MinIO, stripe-mock,
the front end as its own process; no operator, so the jobs stay records), N DepthBatches
created through `POST /v1/depth-batches`, then headless Chromium (SwiftShader, as the browser
tests) opens /console/#/jobs L times with the key in sessionStorage. From the page's own
performance timeline: first-contentful-paint, and the `jobs-list-ready` mark (app.js, set
when the first page of rows is in the table and clickable). The list shows the newest 100
(`/v1/jobs?limit=100`) and the count of all. Final line: JSON with the medians.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import statistics
import sys
import time
import uuid
from pathlib import Path

import aiohttp

sys.path.insert(0, str(Path(__file__).parent))  # bench/ is scripts, not a package: share api_load's stack helpers
from api_load import BENCH_STATE, drive, serve, tenant_key, wait_ready
from stack import frontend_env, start_servers, stop_servers

from spatialforge.devcluster.plane import start_cluster
from spatialforge.devcluster.ports import free_port

BUCKET = "sf-bench"


def browser():
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    os.environ["SE_OFFLINE"] = "true"
    options = webdriver.ChromeOptions()
    options.binary_location = "/usr/bin/chromium"
    for arg in ("--headless=new", "--no-sandbox", "--disable-dev-shm-usage", "--use-angle=swiftshader",
                "--enable-unsafe-swiftshader", "--window-size=1280,1000"):
        options.add_argument(arg)
    return webdriver.Chrome(options=options, service=Service(executable_path="/usr/bin/chromedriver"))


def measure(url: str, key: str, loads: int, jobs: int) -> dict[str, float]:
    driver = browser()
    paints, ready = [], []
    try:
        driver.get(f"{url}/console/")
        driver.execute_script("sessionStorage.setItem('spatialforge.apiKey', arguments[0])", key)
        for _ in range(loads):
            driver.get("about:blank")
            driver.get(f"{url}/console/#/jobs")
            timing = None
            for _ in range(200):
                timing = driver.execute_script(
                    "const r = performance.getEntriesByName('jobs-list-ready', 'mark')[0];"
                    "const p = performance.getEntriesByName('first-contentful-paint')[0];"
                    "return r && p ? [p.startTime, r.startTime, document.querySelectorAll('#jobs tbody tr').length,"
                    " document.querySelector('[aria-live]').textContent] : null")
                if timing:
                    break
                time.sleep(0.05)
            assert timing, "the jobs list was not shown"
            paint, shown, rows, count = timing
            assert rows == min(100, jobs) and count == f"{jobs} job(s)", (rows, count)
            paints.append(paint)
            ready.append(shown)
    finally:
        driver.quit()
    return {"first_paint_ms": round(statistics.median(paints), 1), "list_ready_ms": round(statistics.median(ready), 1),
            "list_ready_max_ms": round(max(ready), 1)}


async def main(args: argparse.Namespace) -> dict:
    BENCH_STATE.mkdir(parents=True, exist_ok=True)
    plane, _ = start_cluster()
    started: list[str] = []
    proc = None
    try:
        env = start_servers(BENCH_STATE, started)
        api_env = frontend_env(plane, env, BUCKET)
        tenant = f"t{uuid.uuid4().hex[:8]}"
        key = await tenant_key(api_env, tenant)
        port = free_port()
        url = f"http://127.0.0.1:{port}"
        proc = serve(api_env, port, 1)
        await wait_ready(url, proc)
        prefix = f"s3://{BUCKET}/tenants/{tenant}/"
        body = json.dumps({"inputs": [f"{prefix}inputs/img.jpg"], "output": {"uri": f"{prefix}results"},
                           "placement": {"gpus": 0}}).encode()
        async with aiohttp.ClientSession(base_url=url, headers={"X-API-Key": key, "Content-Type": "application/json"}) as session:
            async def create(i: int) -> str | None:
                async with session.post("/v1/depth-batches", data=body) as resp:
                    return None if resp.status == 202 else f"{resp.status} {(await resp.read())[:200]!r}"

            _, wall, errors = await drive(8, create, count=args.jobs)
            assert not errors, errors[:3]
            while True:  # the list is served from a watch-backed cache: wait until it holds them all
                async with session.get("/v1/jobs?limit=1") as resp:
                    if (await resp.json())["count"] == args.jobs:
                        break
                await asyncio.sleep(0.2)
        result = {"jobs": args.jobs, "create_seconds": round(wall, 1)}
        result.update(await asyncio.to_thread(measure, url, key, args.loads, args.jobs))
        return result
    finally:
        if proc is not None:
            proc.terminate()
            proc.wait(30)
        stop_servers(BENCH_STATE, started)


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--jobs", type=int, default=1000, help="DepthBatches in the account")
    parser.add_argument("--loads", type=int, default=5, help="page loads measured (median reported)")
    print(json.dumps(asyncio.run(main(parser.parse_args()))))
