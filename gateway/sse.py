"""Server-sent events: framing and the streaming response that holds a replica slot."""

from __future__ import annotations

import time
from collections.abc import AsyncIterator, Callable, Mapping
from typing import Any, TypeVar

import orjson
import structlog
from starlette.responses import StreamingResponse
from starlette.types import Receive, Scope, Send

from core.connect import UNAVAILABLE_ERRORS
from core.errors import GatewayError, Overloaded, RedisUnavailable

log = structlog.stdlib.get_logger(__name__)

T = TypeVar("T")

STREAM_ERRORS = (Exception,)
"""What ends a stream that already started with an error event and `[DONE]`: anything but
a cancellation. A bug or odd model output must still end the stream, never cut it off or
leave it heartbeating; `as_gateway_error` logs what is not a `GatewayError`."""

DONE = b"data: [DONE]\n\n"
HEARTBEAT = b": heartbeat\n"
"""A comment line and no blank line after it: a blank line ends an event, and once a stream
has sent an `id:`, clients that keep the last event id (the `openai` SDKs among them)
dispatch an empty event for it and fail to parse it. A lone comment line dispatches nothing;
the next event's lines simply follow it."""
SSE_HEADERS = {"Cache-Control": "no-cache", "X-Accel-Buffering": "no"}


def as_gateway_error(error: Exception) -> GatewayError:
    """An error that ended a stream, as the gateway error its client is shown."""
    if isinstance(error, GatewayError):
        return error
    if isinstance(error, UNAVAILABLE_ERRORS):
        return RedisUnavailable(f"redis is unavailable: {error}")
    log.error("unexpected_stream_error", exc_info=error)
    return GatewayError(f"the gateway failed ({type(error).__name__}); the details are in its log")


async def failures_as(
    source: AsyncIterator[T], failed: Callable[[GatewayError], T], event: str, **context: object
) -> AsyncIterator[T]:
    """`source`, ending with `failed(error)` where it would raise: the one place where an
    error that ends a started stream becomes that stream's error event (logged as `event`).
    Each protocol says how its error event reads; a cancellation still goes through."""
    try:
        async for item in source:
            yield item
    except STREAM_ERRORS as raised:
        error = as_gateway_error(raised)
        log.warning(event, code=error.code, error=error.message, **context)
        yield failed(error)


def data(payload: Any) -> bytes:
    """One `data:` event."""
    return b"data: " + orjson.dumps(payload) + b"\n\n"


class StreamSlots:
    """Counts the streams this replica holds, bounded by `max_held_streams`."""

    def __init__(self, limit: int) -> None:
        self.limit = limit
        self.held = 0

    def response(
        self, body: AsyncIterator[bytes], headers: Mapping[str, str] | None = None
    ) -> StreamingResponse:
        """An SSE response that occupies one slot while it streams."""
        if self.held >= self.limit:
            raise Overloaded(f"this replica holds {self.held} streams, its limit")
        self.held += 1
        return _SlotResponse(self, body, {**SSE_HEADERS, **(headers or {})})


class _SlotResponse(StreamingResponse):
    """Gives its slot back when it is done, however it ends (no wrapper per chunk)."""

    def __init__(
        self, slots: StreamSlots, body: AsyncIterator[bytes], headers: Mapping[str, str]
    ) -> None:
        super().__init__(body, media_type="text/event-stream", headers=headers)
        self._slots = slots

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        try:
            await super().__call__(scope, receive, send)
        finally:
            self._slots.held -= 1


class HeartbeatTimer:
    """When a held stream's next heartbeat is due: every stream that can fall quiet (a held
    request, a re-attached one, the approvals feed, a run's listener) keeps one."""

    def __init__(self, interval_s: float) -> None:
        self.interval_s = interval_s
        self.next_at = time.monotonic() + interval_s

    def remaining(self) -> float:
        return max(self.next_at - time.monotonic(), 0.0)

    def sent(self) -> None:
        """Something was sent: the stream is not quiet, the next beat is an interval away."""
        self.next_at = time.monotonic() + self.interval_s

    def due(self) -> bool:
        """True once per interval: send a heartbeat now."""
        if time.monotonic() < self.next_at:
            return False
        self.next_at = time.monotonic() + self.interval_s
        return True
