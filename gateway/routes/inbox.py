"""`/inbox`: the approver's web page, served by every replica from `gateway/static/`.

Plain HTML, CSS and one script, no build step and nothing loaded from elsewhere. The page
talks to the same API as any client (the key kept in the tab's `sessionStorage`, sent only
as a bearer header). Every response carries a strict Content-Security-Policy: scripts and
styles from this origin only (no inline script or style attribute), no frames, no forms
posted anywhere, no plug-ins.
"""

from __future__ import annotations

from pathlib import Path

from starlette.requests import Request
from starlette.responses import FileResponse, Response

from core.errors import NotFound
from gateway.openapi import Operation, Param, Reply

STATIC = Path(__file__).resolve().parent.parent / "static"
ASSETS = {
    "inbox.js": "text/javascript; charset=utf-8",
    "inbox.css": "text/css; charset=utf-8",
    "icon.svg": "image/svg+xml",
}
"""The only files served besides the page: a fixed list, so no path reaches anything else."""

CSP = "; ".join(
    [
        "default-src 'none'",
        "script-src 'self'",
        "style-src 'self'",
        "img-src 'self'",
        "connect-src 'self'",
        "base-uri 'none'",
        "form-action 'none'",
        "frame-ancestors 'none'",
    ]
)
HEADERS = {
    "Content-Security-Policy": CSP,
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "no-referrer",
    "X-Frame-Options": "DENY",
    "Cache-Control": "no-cache",
}


async def page(request: Request) -> Response:
    return FileResponse(
        STATIC / "inbox.html", media_type="text/html; charset=utf-8", headers=HEADERS
    )


async def asset(request: Request) -> Response:
    name = request.path_params["name"]
    media_type = ASSETS.get(name)
    if media_type is None:
        raise NotFound(f"no inbox file {name!r}")
    return FileResponse(STATIC / name, media_type=media_type, headers=HEADERS)


OPERATIONS = (
    Operation(
        "GET",
        "/inbox",
        "The approver's web page (docs/inbox.md)",
        {200: Reply("The page; it asks for a key and keeps it in the tab", text=("text/html",))},
        keyed=False,
        tag="inbox",
    ),
    Operation(
        "GET",
        "/inbox/{name}",
        "A file of the inbox page",
        {200: Reply("The file", text=tuple(sorted({t.split(";")[0] for t in ASSETS.values()})))},
        params=(Param("name", f"One of {', '.join(sorted(ASSETS))}", "path"),),
        errors=(NotFound,),
        keyed=False,
        tag="inbox",
    ),
)
