"""Completion webhooks: signed, retried with backoff, and refused for private, loopback and
link-local targets unless allow-listed (the local receiver's 127.0.0.1/32 is)."""

from __future__ import annotations

import asyncio
import json
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest
import redis

from spatialforge.apiserver.services.webhooks import SIGNATURE_HEADER, UnsafeTarget, check_target
from spatialforge.client import verify_webhook
from tests.apiserver.conftest import wait_until
from tests.timeouts import MEDIUM


class Receiver:
    """A local HTTP receiver that fails the first `fail` deliveries with 500."""

    def __init__(self, fail: int) -> None:
        self.fail = fail
        self.calls: list[tuple[dict[str, str], bytes]] = []
        outer = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:  # noqa: N802
                body = self.rfile.read(int(self.headers["Content-Length"]))
                outer.calls.append((dict(self.headers), body))
                self.send_response(500 if len(outer.calls) <= outer.fail else 204)
                self.end_headers()

            def log_message(self, *args: object) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_port}/hooks/sf"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def close(self) -> None:
        self.server.shutdown()


def test_completion_webhook_is_signed_and_retried(make_tenant, make_settings):
    receiver = Receiver(fail=2)
    try:
        t = make_tenant("pro", seconds=1)
        with t.client() as c:
            job = c.post("/v1/depth-batches", json=t.depth_spec(), params={"webhook_url": receiver.url}).json()
            wait_until("3 deliveries", lambda: len(receiver.calls) >= 3, MEDIUM)
            secret = c.get("/v1/webhooks/secret").json()["secret"]
        headers, body = receiver.calls[-1]
        event = verify_webhook(body, headers[SIGNATURE_HEADER], secret)
        assert event["type"] == "job.succeeded" and event["data"]["id"] == job["id"]
        assert event["data"]["phase"] == "Succeeded"
        # Every attempt carries the same event; a wrong secret or a tampered body fails.
        assert {json.loads(b)["id"] for _, b in receiver.calls} == {event["id"]}
        with pytest.raises(ValueError):
            verify_webhook(body, headers[SIGNATURE_HEADER], "whsec_wrong")
        with pytest.raises(ValueError):
            verify_webhook(body.replace(b"Succeeded", b"Failed"), headers[SIGNATURE_HEADER], secret)
        # Delivered once, on the third attempt, and recorded so (no further calls).
        rc = redis.Redis.from_url(make_settings().redis_url, decode_responses=True)
        uid = event["id"].removeprefix("evt_")
        wait_until("delivery recorded", lambda: rc.get(f"webhook:sent:{uid}") == "delivered:3")
        assert len(receiver.calls) == 3
    finally:
        receiver.close()


def test_ssrf_targets_are_refused_at_submit(make_tenant, cluster):
    t = make_tenant("pro")
    targets = ["http://127.0.0.2:8080/x", "http://10.0.0.5/x", "http://192.168.1.10/x", "http://172.16.0.1/x",
               "http://169.254.169.254/latest/meta-data", "http://[::1]/x", "http://[fe80::1]/x", "http://0.0.0.0/x",
               "http://[::ffff:10.0.0.1]/x", "ftp://example.com/x", "http://user:pw@example.com/x", "http://100.64.0.1/x"]
    with t.client() as c:
        for url in targets:
            r = c.post("/v1/depth-batches", json=t.depth_spec(), params={"webhook_url": url})
            assert r.status_code == 422, (url, r.text)
            assert r.json()["error"]["code"] == "unsafe_webhook"
    assert cluster.list("depthbatches", t.namespace) == []


def test_check_target_needs_the_allow_list_for_loopback():
    async def go() -> None:
        for url in ("http://127.0.0.1:9/x", "http://localhost:9/x", "http://169.254.1.1/x"):
            with pytest.raises(UnsafeTarget):
                await check_target(url, [])
        await check_target("http://127.0.0.1:9/x", ["127.0.0.1/32"])
        await check_target("http://localhost:9/x", ["localhost"])
        with pytest.raises(UnsafeTarget):
            await check_target("http://127.0.0.2:9/x", ["127.0.0.1/32"])
        await check_target("https://93.184.215.14/hook", [])  # a public address

    asyncio.run(go())
