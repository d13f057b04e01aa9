"""A DepthPool's per-tenant in-flight limit (`maxInFlightPerTenant`) holds across front-end
replicas: two front ends on one real Redis, one real depth server holding a request, a pool
that allows one request per tenant (issue 19 §3)."""

from __future__ import annotations

import asyncio
import subprocess
import time
import uuid
from collections.abc import Callable, Iterator

import httpx
import pytest

from spatialforge.devcluster.plane import Cluster
from tests.apiserver.conftest import ServerThread, Tenant
from tests.apiserver.test_sync import DepthServer, _photo, _pod_address, _pool, _start_server, _stop
from tests.timeouts import MEDIUM, SHORT


@pytest.fixture(scope="module")
def two_front_ends(cluster: Cluster, make_settings, api, tmp_path_factory: pytest.TempPathFactory
                   ) -> Iterator[tuple[DepthServer, ServerThread, ServerThread]]:
    from spatialforge.crds.v1alpha1.common import ModelSize, ModelVariant
    from spatialforge.runner.models.tiny import build_tiny_model_dir

    tmp = tmp_path_factory.mktemp("tenant-limit")
    models = build_tiny_model_dir(tmp / "models", sizes=(ModelSize.small,), variants=(ModelVariant.metric_indoor,))
    address = _pod_address()
    # One request at a time, held 5 s waiting for a batch that never fills.
    slow = _start_server(tmp, models, address, "--max-batch", "8", "--max-wait-ms", "5000", "--max-queue", "4")
    ns = f"limit-{uuid.uuid4().hex[:6]}"
    cluster.apply({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": ns}})
    _pool(cluster, ns, "one", [(address, slow.port, True)], maxInFlightPerTenant=1)
    settings = make_settings(depth_pools=f"{ns}/one", pool_refresh_seconds=0.5)
    first, second = ServerThread(settings).start(), ServerThread(settings).start()
    try:
        yield slow, first, second
    finally:
        first.stop()
        second.stop()
        _stop(slow)
        subprocess.run(["ip", "addr", "del", f"{address}/32", "dev", "lo"], capture_output=True, check=False)
        cluster.kubectl("delete", "namespace", ns, "--wait=false", check=False)


def test_the_limit_counts_requests_on_every_front_end(two_front_ends: tuple[DepthServer, ServerThread, ServerThread],
                                                      make_tenant: Callable[..., Tenant]) -> None:
    slow, first, second = two_front_ends
    tenant, other = make_tenant("free"), make_tenant("free")

    async def scenario() -> list[httpx.Response]:
        async with httpx.AsyncClient(timeout=MEDIUM) as c:
            held = asyncio.create_task(c.post(first.url + "/v1/depth", files={"image": ("a.jpg", _photo())},
                                              headers={**tenant.headers, "Accept": "image/png"}))
            deadline = time.monotonic() + SHORT
            while slow.metric("spatialforge_serve_queue_depth") < 1:  # the server holds it
                assert time.monotonic() < deadline, "the first request never reached the depth server"
                await asyncio.sleep(0.05)
            same_tenant = await c.post(second.url + "/v1/depth", files={"image": ("b.jpg", _photo())},
                                       headers=tenant.headers)
            other_tenant = asyncio.create_task(c.post(second.url + "/v1/depth", files={"image": ("c.jpg", _photo())},
                                                      headers={**other.headers, "Accept": "image/png"}))
            done = await held
            after = await c.post(second.url + "/v1/depth", files={"image": ("d.jpg", _photo())},
                                 headers={**tenant.headers, "Accept": "image/png"})
            return [done, same_tenant, await other_tenant, after]

    held, same_tenant, other_tenant, after = asyncio.run(scenario())
    assert held.status_code == 200, held.text
    # The second front end knows of the request the first one holds: the tenant's one slot is taken.
    assert same_tenant.status_code == 503 and same_tenant.json()["error"]["code"] == "pool_tenant_limit", same_tenant.text
    assert int(same_tenant.headers["Retry-After"]) >= 1
    assert other_tenant.status_code == 200, other_tenant.text  # another tenant's slot is its own
    assert after.status_code == 200, after.text  # the slot was given back when the first answer came
