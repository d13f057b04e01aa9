"""One pure-ASGI middleware: request id, security headers, timeout, metrics, access log."""

from __future__ import annotations

import asyncio
import json
import logging
import re
import time
import uuid
from typing import Any

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
                log.info("%s %s %s %.1fms tenant=%s", method, route, status["code"], elapsed * 1000, tenant or "-")
