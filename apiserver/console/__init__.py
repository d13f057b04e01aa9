"""The web console: static files at /console, a client of the public REST API only.

Nothing here is an endpoint of its own: the page calls /v1/... with the key the user pastes
(kept in the tab's sessionStorage). Every file is served with a strict Content-Security-Policy
(no inline script, no other origin), `nosniff`, `frame-ancestors 'none'` and a short cache
lifetime, and never with CORS headers. The one other origin the policy names is the object
store's public endpoint (from settings), where the job files' signed URLs point: the 3D viewer
fetches meshes and trajectories from it and shows floor plans from it as images.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from fastapi import FastAPI
from fastapi.responses import PlainTextResponse, RedirectResponse
from starlette.exceptions import HTTPException
from starlette.staticfiles import StaticFiles
from starlette.types import Message, Receive, Scope, Send

STATIC = Path(__file__).parent / "static"
PREFIX = "/console"


def object_store_origin(endpoint: str | None) -> str | None:
    """The scheme://host[:port] of the signed URLs' endpoint; None without one (AWS's own
    endpoints are then chosen by boto3 per bucket, and the viewer stays off-limits)."""
    if not endpoint:
        return None
    parts = urlsplit(endpoint)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise ValueError(f"the object store endpoint {endpoint!r} is not an http(s) URL")
    return f"{parts.scheme}://{parts.netloc}"


def csp(object_store: str | None = None) -> str:
    """The console's policy. img-src blob:/data: for canvas-made previews; connect-src 'self' for
    every API call, plus the object store's origin (when named) for the signed job files."""
    extra = f" {object_store}" if object_store else ""
    return ("default-src 'none'; script-src 'self'; style-src 'self'; "
            f"img-src 'self' blob: data:{extra}; connect-src 'self'{extra}; font-src 'self'; "
            "base-uri 'none'; form-action 'none'; frame-ancestors 'none'")


CSP = csp()


def headers(policy: str = CSP) -> dict[str, str]:
    """Every console answer's security headers."""
    return {
        "Content-Security-Policy": policy,
        "X-Content-Type-Options": "nosniff",
        "X-Frame-Options": "DENY",
        "Referrer-Policy": "no-referrer",
        "Cross-Origin-Opener-Policy": "same-origin",
        # Revalidated on every load (ETag/Last-Modified from StaticFiles): a new release is seen at once.
        "Cache-Control": "no-cache",
    }


HEADERS = headers()


class SecureStatic:
    """StaticFiles with the console's security headers added to every answer (404s included)."""

    def __init__(self, directory: Path, policy: str = CSP) -> None:
        self.files = StaticFiles(directory=directory, html=True)
        self.raw = [(k.lower().encode(), v.encode()) for k, v in headers(policy).items()]

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        async def send_with_headers(message: Message) -> None:
            if message["type"] == "http.response.start":
                names = {k for k, _ in self.raw}
                kept = [(k, v) for k, v in message.get("headers", []) if k.lower() not in names]
                message = {**message, "headers": kept + self.raw}
            await send(message)

        try:
            await self.files(scope, receive, send_with_headers)
        except HTTPException as exc:  # a missing file: answered here, so it carries the headers too
            await PlainTextResponse(str(exc.detail), exc.status_code)(scope, receive, send_with_headers)


def mount(app: FastAPI) -> None:
    """Serve the console at /console/ (and redirect /console there); the CSP names the object
    store's public endpoint from `app.state.settings`, as the signed URLs do."""
    settings = getattr(app.state, "settings", None)
    endpoint = settings and (settings.s3_public_endpoint or settings.s3_endpoint)
    policy = csp(object_store_origin(endpoint))

    @app.get(PREFIX, include_in_schema=False)
    async def console_root() -> Any:
        return RedirectResponse(f"{PREFIX}/", status_code=308, headers=headers(policy))

    app.mount(PREFIX, SecureStatic(STATIC, policy), name="console")
