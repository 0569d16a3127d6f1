"""`X-Request-Id`: every response carries one, the client's own when it sent a usable one.

The id is also kept on the approval sessions a chat request opens (`request_id`), so a
client whose library hides the extra fields of a stream can find its approval with
`GET /v1/approvals?request_id=...`.
"""

from __future__ import annotations

import re
import secrets

import structlog
from starlette.types import ASGIApp, Receive, Scope, Send

from core.asgi import add_response_header

HEADER = b"x-request-id"
_USABLE = re.compile(rb"[A-Za-z0-9._:-]{1,128}")


def request_id_of(scope: Scope) -> str:
    """The id of the request being served (set by `RequestIds`)."""
    return str(scope.get("state", {}).get("request_id", ""))


class RequestIds:
    """Pure ASGI middleware (inside `core.asgi.ResponseStart`): picks the request's id and
    puts it on the response and on the request's log lines (`request_id`)."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        sent = next((value for name, value in scope["headers"] if name == HEADER), b"")
        request_id = sent if _USABLE.fullmatch(sent) else f"req_{secrets.token_hex(12)}".encode()
        scope.setdefault("state", {})["request_id"] = request_id.decode()
        add_response_header(scope, HEADER, request_id)
        # On every log line of the request, and of the tasks it starts (they copy the context).
        structlog.contextvars.bind_contextvars(request_id=request_id.decode())
        try:
            await self.app(scope, receive, send)
        finally:  # with what the request bound later (tenant, session_id)
            structlog.contextvars.clear_contextvars()
