"""Pure-ASGI middleware: `ServiceMiddleware` (request id, security headers, timeout, metrics,
access log) and `GuardMiddleware` (body cap and authentication before the body is read)."""

from __future__ import annotations

import asyncio
import json
import logging
import re
import time
import uuid
from collections.abc import Callable
from typing import Any

from spatialforge.apiserver import errors
from spatialforge.apiserver.core import logging as sf_logging

log = logging.getLogger("spatialforge.apiserver.access")
REQUEST_ID = re.compile(r"^[A-Za-z0-9._-]{1,64}$")
SECURITY_HEADERS = [
    (b"strict-transport-security", b"max-age=63072000; includeSubDomains"),
    (b"x-content-type-options", b"nosniff"),
    (b"x-frame-options", b"DENY"),
    (b"referrer-policy", b"no-referrer"),
    (b"cache-control", b"no-store"),
]
CSP_API = b"default-src 'none'; frame-ancestors 'none'"
# /docs and /redoc load FastAPI's Swagger UI / ReDoc assets from jsDelivr.
CSP_DOCS = (b"default-src 'self'; script-src 'self' 'unsafe-inline' https://cdn.jsdelivr.net; "
            b"style-src 'self' 'unsafe-inline' https://cdn.jsdelivr.net; img-src 'self' data: https://fastapi.tiangolo.com; "
            b"frame-ancestors 'none'")


class ServiceMiddleware:
    def __init__(self, app: Any, *, timeout: float, metrics: Any) -> None:
        self.app = app
        self.timeout = timeout
        self.metrics = metrics

    async def __call__(self, scope: dict, receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        incoming = dict(scope.get("headers") or []).get(b"x-request-id", b"").decode("latin-1")
        rid = incoming if REQUEST_ID.match(incoming) else uuid.uuid4().hex
        sf_logging.request_id.set(rid)
        extra: dict[str, str] = {}
        sf_logging.response_headers.set(extra)
        path = scope.get("path", "")
        csp = CSP_DOCS if path in ("/docs", "/redoc") else CSP_API
        status = {"code": 500, "started": False}
        start = time.perf_counter()

        async def send_wrapper(message: dict) -> None:
            if message["type"] == "http.response.start":
                status["code"], status["started"] = message["status"], True
                headers = list(message.get("headers") or [])
                present = {k.lower() for k, _ in headers}
                headers += [(k, v) for k, v in SECURITY_HEADERS if k not in present]
                if b"content-security-policy" not in present:  # the console's static files set their own
                    headers.append((b"content-security-policy", csp))
                headers.append((b"x-request-id", rid.encode()))
                headers += [(k.lower().encode(), v.encode()) for k, v in extra.items() if k.lower().encode() not in present]
                message = {**message, "headers": headers}
            await send(message)

        try:
            async with asyncio.timeout(self.timeout):
                await self.app(scope, receive, send_wrapper)
        except TimeoutError:
            if not status["started"]:
                body = json.dumps({"error": {"code": "timeout", "message": f"request took longer than {self.timeout:g}s"},
                                   "request_id": rid}).encode()
                await send_wrapper({"type": "http.response.start", "status": 504,
                                    "headers": [(b"content-type", b"application/json")]})
                await send({"type": "http.response.body", "body": body})
        finally:
            elapsed = time.perf_counter() - start
            route = getattr(scope.get("route"), "path", "unmatched")
            method = scope.get("method", "")
            self.metrics.requests.labels(method, route, str(status["code"])).inc()
            self.metrics.latency.labels(method, route).observe(elapsed)
            if route not in ("/health", "/metrics"):
                state = scope.get("state")
                tenant = state.get("tenant") if isinstance(state, dict) else None
                shown = route if route != "unmatched" else path[:200]  # refused before routing: the path
                log.info("%s %s %s %.1fms tenant=%s", method, shown, status["code"], elapsed * 1000, tenant or "-")


Render = Callable[[Exception], tuple[int, bytes, dict[str, str]]]


async def _send_json(send: Any, status: int, body: bytes, headers: dict[str, str]) -> None:
    raw = [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode())]
    raw += [(k.lower().encode("latin-1"), v.encode("latin-1")) for k, v in headers.items()]
    await send({"type": "http.response.start", "status": status, "headers": raw})
    await send({"type": "http.response.body", "body": body})


def client_address(scope: dict) -> str:
    """The caller's address (after ProxyHeadersMiddleware applied the trusted-proxy setting)."""
    client = scope.get("client")
    return str(client[0]) if client else "unknown"


class GuardMiddleware:
    """Before the app reads a byte of the body: a `Content-Length` over `max_body` is 413, and
    keyed paths (`/v1/...` except `public`) are authenticated and rate-charged by the gate
    (`app.state.gate`); the principal goes to `scope["state"]["principal"]`. A body without a
    length (chunked) is counted as it streams by FastAPI's own `max_body_size` (the same limit).

    `render(exc)` turns a domain error into (status, JSON body, headers): main.py's table.
    """

    def __init__(self, app: Any, *, max_body: int, public: frozenset[str], render: Render,
                 unavailable: tuple[type[BaseException], ...] = (), body_limits: dict[str, int] | None = None) -> None:
        self.app = app
        self.max_body = max_body
        self.body_limits = dict(body_limits or {})  # paths with their own limit (image uploads)
        self.public = public
        self.render = render
        self.unavailable = unavailable

    def _needs_key(self, path: str) -> bool:
        return path.startswith("/v1/") and path not in self.public

    async def __call__(self, scope: dict, receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        headers = {k.decode("latin-1").lower(): v.decode("latin-1") for k, v in scope.get("headers") or []}
        length = headers.get("content-length", "")
        limit = self.body_limits.get(scope.get("path", ""), self.max_body)
        if length.isdigit() and int(length) > limit:
            await self._refuse(send, errors.PayloadTooLarge(f"request bodies are limited to {limit} bytes",
                                                            details={"limit": limit}))
            return
        if self._needs_key(scope.get("path", "")):
            gate = getattr(scope["app"].state, "gate", None)
            try:
                if gate is None:
                    raise errors.Unavailable("the server is starting", headers={"Retry-After": "1"})
                principal, rate_headers = await gate.authenticate(headers, client_address(scope))
            except errors.ServiceError as exc:
                await self._refuse(send, exc)
                return
            except self.unavailable as exc:
                log.error("authentication backend unavailable: %s", type(exc).__name__)
                await self._refuse(send, errors.Unavailable("Redis is unavailable; nothing was changed",
                                                            headers={"Retry-After": "5"}))
                return
            state = scope.setdefault("state", {})
            state["principal"], state["tenant"] = principal, principal.tenant
            sf_logging.response_headers.get({}).update(rate_headers)

        await self.app(scope, receive, send)

    async def _refuse(self, send: Any, exc: Exception) -> None:
        status, body, headers = self.render(exc)
        await _send_json(send, status, body, headers)
