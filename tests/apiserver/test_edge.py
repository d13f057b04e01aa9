"""The front end's edge: one error body for every error (the framework's own included), bodies
capped before they are read, keys checked before bodies are parsed, failed authentications
limited per address (the client address taken only from trusted proxies), and the public
surface: metrics on their own port, API docs only when enabled."""

from __future__ import annotations

import socket
import time
import uuid
from collections.abc import Iterator

import httpx
import pytest

from spatialforge.devcluster.ports import free_port
from tests.apiserver.conftest import ServerThread
from tests.timeouts import SHORT


def _documented(r: httpx.Response, status: int, code: str) -> dict:
    assert r.status_code == status, r.text
    body = r.json()
    assert set(body) == {"error", "request_id"}, body
    assert body["error"]["code"] == code and body["error"]["message"], body
    assert body["request_id"] == r.headers["X-Request-ID"]
    return body["error"]


def test_framework_errors_use_the_documented_body(api, make_tenant):
    _documented(httpx.get(f"{api.url}/no/such/route"), 404, "not_found")
    _documented(httpx.put(f"{api.url}/health"), 405, "method_not_allowed")
    t = make_tenant("pro")
    with t.client() as c:
        _documented(c.get("/v1/no-such-thing"), 404, "not_found")
        _documented(c.patch("/v1/jobs"), 405, "method_not_allowed")
        # Malformed JSON: a 400 that names no field (FastAPI would name a byte offset).
        err = _documented(c.post("/v1/depth-batches", content=b'{"inputs": [', headers={"Content-Type": "application/json"}),
                          400, "invalid_json")
        assert "fields" not in err and "not valid JSON" in err["message"]
        # A query parameter of the wrong type: 422 naming it.
        err = _documented(c.get("/v1/jobs", params={"limit": "many"}), 422, "invalid_request")
        assert [f["field"] for f in err["fields"]] == ["limit"]
        # A body of the wrong JSON type: 422 naming the body.
        err = _documented(c.post("/v1/depth-batches", json=[1, 2]), 422, "invalid_request")
        assert err["fields"]



def test_a_refused_body_is_freed_with_its_request(api, make_tenant):
    """A refused body must not wait for the cyclic collector: the front end's GC thresholds are
    raised (`tune_gc`), and an error kept in a cycle with its traceback held the whole body,
    so 1,000 malformed 1 MB bodies grew the process by 900 MB (bench/api_load.py)."""
    import gc
    from fastapi.exceptions import RequestValidationError

    t = make_tenant("pro")
    body = b'{"inputs": [' + b'"x",' * 200_000  # 800 kB, cut short

    def kept() -> int:
        return sum(isinstance(o, (RequestValidationError, ValueError)) and getattr(o, "doc", getattr(o, "body", None))
                   is not None for o in gc.get_objects())

    with t.client() as c:
        gc.collect()
        before = kept()
        gc.disable()  # only reference counting frees anything now
        try:
            for payload in (body, b'[' + b'1,' * 200_000 + b'1]'):  # malformed, and JSON of the wrong shape
                for _ in range(3):
                    r = c.post("/v1/depth-batches", content=payload, headers={"Content-Type": "application/json"})
                    assert r.status_code in (400, 422), r.text
            assert kept() == before, "a refused body is still held after its answer"
        finally:
            gc.enable()

def _raw(url: str, head: str, body: bytes = b"") -> tuple[str, float]:
    """Send a request head (and maybe part of a body) on a raw socket; the status line, and how
    long the answer took. The body is never completed: an answer proves nothing waited for it."""
    host, port = url.removeprefix("http://").split(":")
    start = time.monotonic()
    with socket.create_connection((host, int(port)), timeout=SHORT) as s:
        s.sendall(head.encode() + b"\r\n" + body)
        answer = s.recv(65536).decode("latin-1")
    return answer.split("\r\n", 1)[0], time.monotonic() - start


def test_bodies_are_capped_before_they_are_read(api, make_tenant):
    t = make_tenant("pro")
    limit = api.app.state.settings.max_body_bytes
    # 50 MB announced, 64 KiB sent: 413 at once, with a made-up key or a real one.
    for key in ("sf_live_" + "Z" * 40, t.key):
        head = (f"POST /v1/depth-batches HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
                f"X-API-Key: {key}\r\nContent-Length: {50 * 1024 * 1024}\r\n")
        status, took = _raw(api.url, head, b"[" * 65536)
        assert status == "HTTP/1.1 413 Content Too Large" or status.startswith("HTTP/1.1 413"), status
        assert took < 2, took
    # The Stripe endpoint too (no key there).
    status, _ = _raw(api.url, f"POST /v1/billing/webhooks HTTP/1.1\r\nHost: x\r\nContent-Length: {limit + 1}\r\n")
    assert status.startswith("HTTP/1.1 413"), status
    # A chunked body (no Content-Length) is counted as it streams.
    def chunks() -> Iterator[bytes]:
        yield b'{"inputs": ["'
        for _ in range(limit // 65536 + 2):
            yield b"a" * 65536

    with t.client() as c:
        err = _documented(c.post("/v1/depth-batches", content=chunks(), headers={"Content-Type": "application/json"}),
                          413, "payload_too_large")
        assert err["limit"] == limit
        # Under the cap, the body is read and validated as before.
        assert c.post("/v1/depth-batches", json=t.depth_spec()).status_code == 202


def test_the_key_is_checked_before_the_body_is_read(api):
    # A body announced and never sent: the 401 comes without waiting for it.
    for headers in ("", "X-API-Key: sf_live_" + "Q" * 40 + "\r\n", "Authorization: Bearer nope\r\n"):
        head = (f"POST /v1/depth-batches HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n{headers}"
                f"Content-Length: 100000\r\n")
        status, took = _raw(api.url, head)
        assert status.startswith("HTTP/1.1 401"), (headers, status)
        assert took < 2, took
    # A malformed body with a made-up key: 401, not a parsing error.
    r = httpx.post(f"{api.url}/v1/depth-batches", content=b"{not json", headers={"X-API-Key": "sf_live_" + "R" * 40})
    _documented(r, 401, "invalid_key")


@pytest.fixture
def proxied(make_settings) -> Iterator[ServerThread]:
    """A front end behind a trusted proxy (127.0.0.1, as the tests call from there) with a small
    failed-authentication limit."""
    server = ServerThread(make_settings(trusted_proxies=["127.0.0.1"], failed_auth_per_ip_per_minute=5)).start()
    yield server
    server.stop()


def _address() -> str:
    """A documentation address (RFC 3849) no other test uses."""
    return f"2001:db8::{uuid.uuid4().hex[:4]}:{uuid.uuid4().hex[:4]}"


def test_failed_authentications_are_limited_per_address(proxied, make_tenant):
    t = make_tenant("pro")
    guesser, bystander = _address(), _address()

    def call(address: str, key: str) -> httpx.Response:
        return httpx.get(f"{proxied.url}/v1/usage", headers={"X-API-Key": key, "X-Forwarded-For": address})

    made_up = ["sf_live_" + uuid.uuid4().hex + uuid.uuid4().hex[:8], "nope", "sf_test_short", "Bearer"]
    codes = [call(guesser, made_up[i % len(made_up)]).status_code for i in range(12)]
    assert codes[:5] == [401] * 5 and codes[5:] == [429] * 7, codes
    refused = call(guesser, "sf_live_" + "W" * 40)
    err = _documented(refused, 429, "too_many_failed_auth")
    assert 0 < int(refused.headers["Retry-After"]) <= 60 and "failed authentications" in err["message"]
    # A valid key still gets through from that address: its clients may share a NAT
    # (tests/apiserver/test_keys.py: test_other_clients_failures_never_lock_out_a_valid_key).
    assert call(guesser, t.key).status_code == 200
    # Another address is unaffected, and a valid key is not counted as a failure.
    for _ in range(6):
        assert call(bystander, t.key).status_code == 200
    # The forwarded address is trusted only from a trusted proxy: on the session's front end
    # (no trusted proxies) X-Forwarded-For changes nothing about who the client is.
    assert proxied.app.state.settings.trusted_proxies == ["127.0.0.1"]


def test_forwarded_for_is_ignored_without_a_trusted_proxy(make_settings):
    server = ServerThread(make_settings(failed_auth_per_ip_per_minute=3)).start()
    try:
        # Every call comes from 127.0.0.1 whatever it claims, so rotating the claim does not help.
        # (The session's other servers count 127.0.0.1 too; their limit is far higher.)
        codes = [httpx.get(f"{server.url}/v1/usage", headers={"X-API-Key": "nope", "X-Forwarded-For": _address()})
                 .status_code for _ in range(5)]
        assert 429 in codes and codes[0] in (401, 429), codes
    finally:
        server.stop()


def test_metrics_on_their_own_port_and_docs_only_when_enabled(make_settings):
    port = free_port()
    server = ServerThread(make_settings(metrics_port=port, metrics_host="127.0.0.1")).start()
    try:
        httpx.get(f"{server.url}/v1/jobs")  # a 401 before routing, counted
        _documented(httpx.get(f"{server.url}/metrics"), 404, "not_found")  # not on the API port
        text = httpx.get(f"http://127.0.0.1:{port}/metrics").text
        assert 'sf_api_requests_total{method="GET",route="unmatched",status="401"}' in text, text[:2000]
        assert "sf_api_request_seconds_bucket" in text
        for path in ("/docs", "/redoc", "/openapi.json"):  # off by default outside dev mode
            _documented(httpx.get(f"{server.url}{path}"), 404, "not_found")
    finally:
        server.stop()
    with pytest.raises(httpx.HTTPError):  # the metrics listener stopped with the app
        httpx.get(f"http://127.0.0.1:{port}/metrics", timeout=2)

    docs = ServerThread(make_settings(public_docs=True)).start()
    try:
        r = httpx.get(f"{docs.url}/docs")
        assert r.status_code == 200 and "cdn.jsdelivr.net" in r.headers["Content-Security-Policy"]
        spec = httpx.get(f"{docs.url}/openapi.json").json()
        assert spec["paths"]["/v1/depth-batches"]["post"]["operationId"] == "jobs-create_depth_batch"
    finally:
        docs.stop()
