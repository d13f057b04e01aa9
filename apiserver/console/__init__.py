"""The web console: static files at /console, a client of the public REST API only.

Nothing here is an endpoint of its own: the page calls /v1/... with the key the user pastes
(kept in the tab's sessionStorage). Every file is served with a strict Content-Security-Policy
(no inline script, no other origin), `nosniff`, `frame-ancestors 'none'` and a short cache
lifetime, and never with CORS headers.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from fastapi import FastAPI
from fastapi.responses import PlainTextResponse, RedirectResponse
from starlette.exceptions import HTTPException
from starlette.staticfiles import StaticFiles
from starlette.types import Message, Receive, Scope, Send

STATIC = Path(__file__).parent / "static"
PREFIX = "/console"
# img-src blob:/data: for the canvas-made previews; connect-src 'self' keeps every API call same-origin.
CSP = ("default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self' blob: data:; "
       "connect-src 'self'; font-src 'self'; base-uri 'none'; form-action 'none'; frame-ancestors 'none'")
HEADERS: dict[str, str] = {
    "Content-Security-Policy": CSP,
    "X-Content-Type-Options": "nosniff",
    "X-Frame-Options": "DENY",
    "Referrer-Policy": "no-referrer",
    "Cross-Origin-Opener-Policy": "same-origin",
    # Revalidated on every load (ETag/Last-Modified from StaticFiles): a new release is seen at once.
    "Cache-Control": "no-cache",
}


class SecureStatic:
    """StaticFiles with the console's security headers added to every answer (404s included)."""

    def __init__(self, directory: Path) -> None:
        self.files = StaticFiles(directory=directory, html=True)
        self.raw = [(k.lower().encode(), v.encode()) for k, v in HEADERS.items()]

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
    """Serve the console at /console/ (and redirect /console there)."""

    @app.get(PREFIX, include_in_schema=False)
    async def console_root() -> Any:
        return RedirectResponse(f"{PREFIX}/", status_code=308, headers=HEADERS)

    app.mount(PREFIX, SecureStatic(STATIC), name="console")
