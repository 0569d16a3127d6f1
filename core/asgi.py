"""`ResponseStart`: the one wrapper of `send` in a process's middleware stack.

Every layer that needs to know about the response (its status for the access log, the
metrics and the trace; whether it started, for the unexpected-error handler; the
request's id as a header) reads what this layer notes in `scope["state"]` instead of
wrapping `send` itself: each wrapper costs an await on every message of every response,
and a held stream sends one per chunk and per heartbeat for as long as it lives.
"""

from __future__ import annotations

from collections.abc import Callable

from starlette.types import ASGIApp, Message, Receive, Scope, Send

STATUS = "response_status"
HEADERS = "response_headers"


def response_status(scope: Scope) -> int:
    """The status the response started with; 0 while it has not started."""
    status: int = scope.get("state", {}).get(STATUS, 0)
    return status


def add_response_header(scope: Scope, name: bytes, value: bytes) -> None:
    """Put a header on the response, when it starts (from a layer inside `ResponseStart`)."""
    scope.setdefault("state", {}).setdefault(HEADERS, []).append((name, value))


class ResponseStart:
    """Pure ASGI middleware, the outermost: notes the status the response starts with (and
    calls `on_start` with it), and adds the headers inner layers asked for."""

    def __init__(self, app: ASGIApp, on_start: Callable[[Scope, int], None] | None = None) -> None:
        self.app = app
        self.on_start = on_start

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        state = scope.setdefault("state", {})

        async def send_noting_start(message: Message) -> None:
            if message["type"] == "http.response.start":
                state[STATUS] = status = message["status"]
                if added := state.get(HEADERS):
                    message["headers"] = [*message.get("headers", []), *added]
                if self.on_start is not None:
                    self.on_start(scope, status)
            await send(message)

        await self.app(scope, receive, send_noting_start)
