"""Completion webhooks: signed, retried with backoff, and refused for private, loopback and
link-local targets unless allow-listed (the local receiver's 127.0.0.1/32 is). Deliveries live
in Redis: a delivery pending when a front end stops is delivered by the next one, two workers
deliver each event once, a dead claimer's delivery is retried after its lease, and a delivery
that keeps failing is given up and recorded for the tenant."""

from __future__ import annotations

import asyncio
import json
import socket
import threading
import time
import uuid
from collections.abc import Callable
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import httpx
import pytest
import redis
import redis.asyncio as aioredis

from spatialforge.apiserver.core import security
from spatialforge.apiserver.core.metrics import Metrics
from spatialforge.apiserver.services import webhooks as wh
from spatialforge.apiserver.services.tenants import Tenants
from spatialforge.apiserver.services.webhooks import SIGNATURE_HEADER, UnsafeTarget, WebhookSender, check_target
from spatialforge.client import verify_webhook
from tests.apiserver.conftest import ServerThread, wait_until
from tests.timeouts import MEDIUM, SHORT


class Receiver:
    """A local HTTP receiver that fails the first `fail` deliveries with 500 (or answers
    `status` to every call). `spans` keeps, per call, when it arrived and when it was answered."""

    def __init__(self, fail: int, delay: float = 0.0, status: int | None = None,
                 headers: dict[str, str] | None = None, drop: int = 0) -> None:
        self.fail = fail
        self.calls: list[tuple[dict[str, str], bytes]] = []
        self.spans: list[tuple[float, float]] = []
        outer = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:  # noqa: N802
                start = time.monotonic()
                body = self.rfile.read(int(self.headers["Content-Length"]))
                outer.calls.append((dict(self.headers), body))
                if len(outer.calls) <= drop:  # read it, then hang up without an answer
                    self.close_connection = True
                    self.connection.shutdown(socket.SHUT_RDWR)
                    outer.spans.append((start, time.monotonic()))
                    return
                time.sleep(delay)
                self.send_response(status or (500 if len(outer.calls) <= outer.fail else 204))
                for k, v in (headers or {}).items():
                    self.send_header(k, v)
                self.end_headers()
                outer.spans.append((start, time.monotonic()))

            do_GET = do_POST  # noqa: N815

            def log_message(self, *args: object) -> None:
                pass

        class Server(ThreadingHTTPServer):
            request_queue_size = 128  # a real receiver's backlog; the default 5 resets bursts

        self.server = Server(("127.0.0.1", 0), Handler)
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


def test_given_up_delivery_is_listed_for_its_tenant_only(make_tenant):
    """A target that always fails: after webhook_max_attempts (4 in tests) the delivery is given
    up and shows in GET /v1/webhooks/failures of its own tenant, not another's."""
    receiver = Receiver(fail=10**6)
    try:
        t, other = make_tenant("pro", seconds=1), make_tenant("pro")
        with t.client() as c:
            job = c.post("/v1/depth-batches", json=t.depth_spec(), params={"webhook_url": receiver.url}).json()
            got = wait_until("the failure listed", lambda: c.get("/v1/webhooks/failures").json()["data"], MEDIUM)
        assert len(receiver.calls) == 4
        (failure,) = got
        event_id = json.loads(receiver.calls[0][1])["id"]
        assert failure["event_id"] == event_id and event_id.startswith("evt_") and job["id"]
        assert failure["url"] == receiver.url and failure["attempts"] == 4 and "500" in failure["last_error"]
        with other.client() as c:
            assert c.get("/v1/webhooks/failures").json() == {"data": [], "count": 0}
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


def _db(url: str, db: int) -> str:
    return url.rsplit("/", 1)[0] + f"/{db}"


def test_delivery_pending_at_stop_is_delivered_by_a_new_instance(make_settings, behaviour, cluster):
    """A front end makes the first attempt (500) and stops during the backoff; a new instance
    over the same Redis delivers the event. Redis database 1 keeps the session's front end
    (database 0) from delivering it first; the job is cancelled, so only the instance that
    cancels it sees it end."""
    receiver = Receiver(fail=1)
    settings = make_settings(redis_url=_db(make_settings().redis_url, 1), webhook_backoff_seconds=5,
                             webhook_poll_seconds=0.1, webhook_timeout_seconds=1)
    rc = redis.Redis.from_url(settings.redis_url, decode_responses=True)
    rc.flushdb()
    tenant = f"t{uuid.uuid4().hex[:10]}"
    namespace = f"sf-{tenant}"
    behaviour.set(namespace, seconds=300)  # still running when it is cancelled

    async def make_key() -> str:
        r = aioredis.Redis.from_url(settings.redis_url, decode_responses=True)
        try:
            tenants = Tenants(r, settings.hmac_key())
            key = (await tenants.create_key(tenant)).key
            await tenants.set_plan(tenant, "pro")
            return key
        finally:
            await r.aclose()

    headers = {"X-API-Key": asyncio.run(make_key())}
    first = ServerThread(settings).start()
    second = None
    try:
        with httpx.Client(base_url=first.url, headers=headers, timeout=30) as c:
            spec = {"inputs": [f"s3://sf-api-tests/tenants/{tenant}/inputs/a.jpg"],
                    "output": {"uri": f"s3://sf-api-tests/tenants/{tenant}/results"}, "placement": {"gpus": 0}}
            job = c.post("/v1/depth-batches", json=spec, params={"webhook_url": receiver.url})
            assert job.status_code == 202, job.text
            job_id = job.json()["id"]
            assert c.delete(f"/v1/jobs/{job_id}").json()["phase"] == "Cancelled"

        def mine() -> list[tuple[dict[str, str], bytes]]:
            return [(h, b) for h, b in receiver.calls if json.loads(b)["data"]["id"] == job_id]

        wait_until("the first attempt", lambda: len(mine()) >= 1, SHORT)
        uid = json.loads(mine()[0][1])["id"].removeprefix("evt_")
        wait_until("the retry to be scheduled", lambda: rc.hget(f"webhook:delivery:{uid}", "last_error"))
        first.stop()
        assert not first.thread.is_alive()
        # Stopped during the backoff: still pending in Redis, with one attempt made.
        assert rc.get(f"webhook:sent:{uid}") == "pending"
        assert rc.hget(f"webhook:delivery:{uid}", "attempts") == "1"
        assert rc.hget(f"webhook:delivery:{uid}", "last_error") == "HTTP 500"
        assert rc.zscore("webhook:due", uid) is not None
        assert len(mine()) == 1

        second = ServerThread(settings).start()
        wait_until("delivery by the new instance", lambda: rc.get(f"webhook:sent:{uid}") == "delivered:2", MEDIUM)
        assert len(mine()) == 2
        event = verify_webhook(mine()[1][1], mine()[1][0][SIGNATURE_HEADER],
                               security.tenant_webhook_secret(settings.hmac_key(), tenant))
        assert event["type"] == "job.cancelled" and event["data"]["id"] == job_id
        assert mine()[0][1] == mine()[1][1]  # the same event, re-signed
        assert rc.zscore("webhook:due", uid) is None and not rc.exists(f"webhook:delivery:{uid}")
    finally:
        if second is not None:
            second.stop()
        if first.thread.is_alive():
            first.stop()
        receiver.close()
        cluster.kubectl("delete", "namespace", namespace, "--wait=false", check=False)
        rc.flushdb()


async def _until(what: str, probe: Callable[[], Any], timeout: float = SHORT) -> Any:
    deadline = time.monotonic() + timeout
    last = None
    while time.monotonic() < deadline:
        last = await probe()
        if last:
            return last
        await asyncio.sleep(0.05)
    raise AssertionError(f"timed out after {timeout:.0f}s waiting for {what} (last: {last!r})")


def _sender(url: str, **kw: Any) -> WebhookSender:
    values = dict(attempts=4, backoff=0.1, timeout=2.0, poll=0.1, lease=3.0)
    values.update(kw)
    r = aioredis.Redis.from_url(url, decode_responses=True)
    return WebhookSender(r, b"s" * 40, ["127.0.0.1/32"], metrics=Metrics(), **values)


def _count(sender: WebhookSender, result: str) -> float:
    return sender.metrics.registry.get_sample_value("sf_api_webhook_deliveries_total", {"result": result}) or 0.0


def _body(uid: str) -> bytes:
    return json.dumps({"id": f"evt_{uid}", "type": "job.succeeded", "data": {"id": uid}}).encode()


def _run(go: Any, receiver: Receiver) -> None:
    """Run a worker-level scenario on a fresh loop; the receiver stops whatever happens."""
    try:
        asyncio.run(go())
    finally:
        receiver.close()


async def _close(*senders: WebhookSender) -> None:
    for s in senders:
        await s.close()
        await s.redis.aclose()


def test_close_stops_a_worker_whose_redis_call_swallowed_its_cancellation(redis_server):
    """redis-py 8 can let a command it was cancelled in finish and return normally, so the
    worker never sees the one cancellation a plain `cancel()` sends and runs on: a CI run hung
    15 minutes in close(). close() stops it all the same."""
    url = _db(redis_server.env["SPATIALFORGE_API_REDIS_URL"], 2)

    async def go() -> None:
        sender = _sender(url)
        original, inside, swallowed = sender.redis.zrange, asyncio.Event(), []

        async def swallowing(*args: Any, **kw: Any) -> Any:
            call = asyncio.ensure_future(original(*args, **kw))
            inside.set()
            try:
                await asyncio.sleep(0.2)
                return await asyncio.shield(call)
            except asyncio.CancelledError:
                if swallowed:
                    raise
                swallowed.append(True)
                return await call  # finished and returned: the cancellation is gone

        sender.redis.zrange = swallowing  # type: ignore[method-assign]
        sender.start()
        await asyncio.wait_for(inside.wait(), SHORT)
        try:
            async with asyncio.timeout(SHORT):
                await sender.close()
        finally:
            await sender.redis.aclose()
        assert swallowed and sender._worker is None

    asyncio.run(go())


def test_two_workers_deliver_each_event_once(redis_server):
    """Each event is recorded delivered exactly once, no two attempts of one event are ever in
    flight together, and every POST the receiver saw is an attempt the record counts: a retry
    (after a transport error, say) is a recorded attempt, never a second worker's copy."""
    url = _db(redis_server.env["SPATIALFORGE_API_REDIS_URL"], 2)
    receiver = Receiver(fail=0, delay=0.05)

    async def go() -> None:
        a, b = _sender(url), _sender(url)
        await a.redis.flushdb()
        uids = [uuid.uuid4().hex for _ in range(30)]
        try:
            # Both replicas see every job end; each event is queued once.
            added = [await s.enqueue("acme", u, receiver.url, _body(u)) for u in uids for s in (a, b)]
            assert sum(added) == len(uids)
            a.start()
            b.start()
            settled = await _until("every event settled", lambda: _settled(a, uids), MEDIUM)
            await _close(a, b)  # nothing in flight any more: what the receiver saw is final
            attempts = {u: int(v.removeprefix("delivered:")) for u, v in settled.items()}
            assert all(v.startswith("delivered:") for v in settled.values()), settled
            by_event: dict[str, list[tuple[float, float]]] = {}
            for (_, body), span in zip(receiver.calls, receiver.spans):
                by_event.setdefault(json.loads(body)["id"], []).append(span)
            assert set(by_event) == {f"evt_{u}" for u in uids}
            for u in uids:
                spans = sorted(by_event[f"evt_{u}"])
                assert len(spans) <= attempts[u], (u, spans, attempts[u])
                assert all(prev[1] <= nxt[0] for prev, nxt in zip(spans, spans[1:])), spans  # never overlapping
            assert _count(a, "delivered") + _count(b, "delivered") == len(uids)
            assert await a.redis.zcard(wh.DUE_KEY) == 0
        finally:
            r = aioredis.Redis.from_url(url, decode_responses=True)
            await r.flushdb()
            await r.aclose()
            await _close(a, b)

    _run(go, receiver)


async def _settled(sender: WebhookSender, uids: list[str]) -> dict[str, str] | None:
    """uid -> its final record, once none is pending."""
    values = await sender.redis.mget([wh.sent_key(u) for u in uids])
    return dict(zip(uids, values)) if all(v and v != "pending" for v in values) else None


def test_a_dead_claimers_delivery_is_retried_after_its_lease(redis_server):
    url = _db(redis_server.env["SPATIALFORGE_API_REDIS_URL"], 2)
    receiver = Receiver(fail=0)

    async def go() -> None:
        dead, live = _sender(url, lease=1.5, timeout=0.5), _sender(url, lease=1.5, timeout=0.5)
        await dead.redis.flushdb()
        uid = uuid.uuid4().hex
        try:
            assert await dead.enqueue("acme", uid, receiver.url, _body(uid))
            # A replica claims it and dies before attempting (its worker never runs).
            claimed_at = time.time()
            claimed = await dead._claim(keys=[wh.DUE_KEY], args=[repr(claimed_at), repr(claimed_at + dead.lease),
                                                                  1, "dead-token", wh.delivery_key("")])
            assert claimed == [uid, 1]
            live.start()
            await asyncio.sleep(0.5)
            assert receiver.calls == [] and await live.redis.get(wh.sent_key(uid)) == "pending"  # leased
            await _until("delivery after the lease", lambda: _all_delivered_at(live, uid, "delivered:2"))
            assert time.time() - claimed_at >= dead.lease
            assert len(receiver.calls) == 1
            # The dead claimer's token no longer settles anything.
            keys = [wh.DUE_KEY, wh.delivery_key(uid), wh.sent_key(uid)]
            assert await dead._settle(keys=keys, args=[uid, "dead-token", "done", "failed", 60, ""]) == 0
            assert await live.redis.get(wh.sent_key(uid)) == "delivered:2"
        finally:
            await dead.redis.flushdb()
            await _close(dead, live)

    _run(go, receiver)


async def _all_delivered_at(sender: WebhookSender, uid: str, value: str) -> bool:
    return await sender.redis.get(wh.sent_key(uid)) == value


def test_delivery_is_given_up_after_max_attempts_and_recorded(redis_server):
    url = _db(redis_server.env["SPATIALFORGE_API_REDIS_URL"], 2)
    receiver = Receiver(fail=10**6)

    async def go() -> None:
        s = _sender(url, attempts=3, backoff=0.05)
        await s.redis.flushdb()
        failing, unsafe = uuid.uuid4().hex, uuid.uuid4().hex
        try:
            await s.enqueue("acme", failing, receiver.url, _body(failing))
            await s.enqueue("acme", unsafe, "http://127.0.0.2:9/x", _body(unsafe))  # not allow-listed
            s.start()
            await _until("given up", lambda: _all_delivered_at(s, failing, "failed"))
            await _until("refused", lambda: _all_delivered_at(s, unsafe, "refused"))
            assert len(receiver.calls) == 3
            assert _count(s, "failed") == 1 and _count(s, "refused") == 1 and _count(s, "retry") == 2
            records = {r["event_id"]: r for r in map(json.loads, await s.redis.lrange(wh.failures_key("acme"), 0, -1))}
            assert records[f"evt_{failing}"]["attempts"] == 3
            assert records[f"evt_{failing}"]["last_error"] == "HTTP 500"
            assert records[f"evt_{unsafe}"]["last_error"].startswith("refused: ")
            assert await s.redis.zcard(wh.DUE_KEY) == 0 and not await s.redis.exists(wh.delivery_key(failing))
        finally:
            await s.redis.flushdb()
            await _close(s)

    _run(go, receiver)


def test_ipv6_forms_embedding_private_ipv4_are_refused():
    async def go() -> None:
        for host in ("2002:a00:1::1", "2002:7f00:1::", "2002:c0a8:101::1",  # 6to4 of 10/8, 127/8, 192.168/16
                     "64:ff9b::a00:1", "64:ff9b::7f00:1", "64:ff9b::a9fe:a9fe",  # NAT64 of 10.0.0.1, 127.0.0.1, 169.254.169.254
                     "64:ff9b::5db8:d70e", "64:ff9b:1::5db8:d70e",  # NAT64 is refused whatever it embeds
                     "2001:0:4136:e378:8000:63bf:3fff:fdd2", "2001::a00:1",  # Teredo
                     "::ffff:a9fe:a9fe", "::a00:1"):  # IPv4-mapped, IPv4-compatible
            with pytest.raises(UnsafeTarget):
                await check_target(f"http://[{host}]/hook", [])
        # 6to4 of a public IPv4 address (93.184.215.14) is fine.
        await check_target("http://[2002:5db8:d70e::1]/hook", [])

    asyncio.run(go())


class FlippingResolver:
    """Answers `first` the first time and `later` afterwards (DNS rebinding), counting calls."""

    def __init__(self, first: str, later: str) -> None:
        self.answers = [first, later]
        self.calls = 0

    async def __call__(self, host: str, port: int) -> list[Any]:
        import ipaddress

        self.calls += 1
        return [ipaddress.ip_address(self.answers[min(self.calls, 2) - 1])]


def test_delivery_connects_only_to_the_checked_address(redis_server):
    """The resolver answers the allow-listed 127.0.0.1 once, then 127.0.0.2 (not allow-listed,
    and where nothing listens). Each attempt resolves once, checks that answer and connects to
    it: the delivery succeeds at 127.0.0.1. A second lookup would have connected elsewhere."""
    url = _db(redis_server.env["SPATIALFORGE_API_REDIS_URL"], 2)
    receiver = Receiver(fail=0)
    hook = receiver.url.replace("127.0.0.1", "hooks.example.test")

    async def go() -> None:
        resolver = FlippingResolver("127.0.0.1", "127.0.0.2")
        s = _sender(url, resolver=resolver)
        await s.redis.flushdb()
        uid = uuid.uuid4().hex
        try:
            # The submission-time check with the same resolver takes its first answer.
            target = await check_target(hook, ["127.0.0.1/32"], resolver)
            assert [str(a) for a in target.addresses] == ["127.0.0.1"]
            resolver.calls = 0  # the delivery's own lookup sees the first answer again
            await s.enqueue("acme", uid, hook, _body(uid))
            s.start()
            await _until("delivered", lambda: _all_delivered_at(s, uid, "delivered:1"))
            assert resolver.calls == 1 and len(receiver.calls) == 1
            headers, _ = receiver.calls[0]
            assert headers["Host"] == f"hooks.example.test:{receiver.server.server_port}"  # the URL's host
            # The next lookup answers 127.0.0.2: refused before any connection, never sent there.
            other = uuid.uuid4().hex
            await s.enqueue("acme", other, hook, _body(other))
            await _until("refused", lambda: _all_delivered_at(s, other, "refused"))
            assert len(receiver.calls) == 1
        finally:
            await s.redis.flushdb()
            await _close(s)

    _run(go, receiver)


def test_redirects_are_not_followed_and_each_attempt_is_bounded(redis_server):
    url = _db(redis_server.env["SPATIALFORGE_API_REDIS_URL"], 2)
    target = Receiver(fail=0)
    redirecting = Receiver(fail=0, status=307, headers={"Location": target.url})
    slow = Receiver(fail=0, delay=1.5)

    async def go() -> None:
        s = _sender(url, attempts=2, backoff=0.05, timeout=0.5, lease=2.0)
        await s.redis.flushdb()
        moved, stalled = uuid.uuid4().hex, uuid.uuid4().hex
        try:
            await s.enqueue("acme", moved, redirecting.url, _body(moved))
            await s.enqueue("acme", stalled, slow.url, _body(stalled))
            started = time.monotonic()
            s.start()
            await _until("redirect given up", lambda: _all_delivered_at(s, moved, "failed"))
            await _until("slow target given up", lambda: _all_delivered_at(s, stalled, "failed"))
            took = time.monotonic() - started
            # The 307 is a failed attempt; its Location is never called.
            assert len(redirecting.calls) == 2 and target.calls == []
            records = {r["event_id"]: r for r in map(json.loads, await s.redis.lrange(wh.failures_key("acme"), 0, -1))}
            assert records[f"evt_{moved}"]["last_error"] == "HTTP 307"
            # Each attempt at the slow target ended at the 0.5 s timeout, not after its 1.5 s answer.
            assert len(slow.calls) == 2 and records[f"evt_{stalled}"]["last_error"] in ("ReadTimeout", "TimeoutError")
            assert took < 2 * 1.5, took
        finally:
            await s.redis.flushdb()
            await _close(s)

    try:
        _run(go, target)
    finally:
        redirecting.close()
        slow.close()


def test_a_transport_error_on_the_first_attempt_is_retried_not_lost(redis_server):
    """The receiver reads the first POST and hangs up without answering (a transport error, as
    a reset or ReadError is): the attempt is recorded as failed, retried after the backoff and
    delivered; nothing waits for a lease."""
    url = _db(redis_server.env["SPATIALFORGE_API_REDIS_URL"], 2)
    receiver = Receiver(fail=0, drop=1)

    async def go() -> None:
        s = _sender(url, backoff=0.1, lease=30.0)  # a lost attempt would wait 30 s for its lease
        await s.redis.flushdb()
        uid = uuid.uuid4().hex
        try:
            await s.enqueue("acme", uid, receiver.url, _body(uid))
            s.start()
            await _until("delivered on the second attempt", lambda: _all_delivered_at(s, uid, "delivered:2"))
            assert len(receiver.calls) == 2 and _count(s, "retry") == 1 and _count(s, "delivered") == 1
            assert await s.redis.zcard(wh.DUE_KEY) == 0
        finally:
            await s.redis.flushdb()
            await _close(s)

    _run(go, receiver)
