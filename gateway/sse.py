"""Server-sent events: framing and the streaming response that holds a replica slot."""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

import orjson
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import TimeoutError as RedisTimeoutError
from starlette.responses import StreamingResponse
from starlette.types import Receive, Scope, Send

from core.errors import GatewayError, Overloaded, RedisUnavailable

STREAM_ERRORS = (GatewayError, RedisConnectionError, RedisTimeoutError)
"""What may end a stream that already started; anything else is a bug and propagates."""

DONE = b"data: [DONE]\n\n"
HEARTBEAT = b": heartbeat\n\n"
SSE_HEADERS = {"Cache-Control": "no-cache", "X-Accel-Buffering": "no"}


def as_gateway_error(error: Exception) -> GatewayError:
    """One of `STREAM_ERRORS` as the gateway error a client is shown."""
    if isinstance(error, GatewayError):
        return error
    return RedisUnavailable(f"redis is unavailable: {error}")


def data(payload: Any) -> bytes:
    """One `data:` event."""
    return b"data: " + orjson.dumps(payload) + b"\n\n"


class StreamSlots:
    """Counts the streams this replica holds, bounded by `max_held_streams`."""

    def __init__(self, limit: int) -> None:
        self.limit = limit
        self.held = 0

    def response(self, body: AsyncIterator[bytes]) -> StreamingResponse:
        """An SSE response that occupies one slot while it streams."""
        if self.held >= self.limit:
            raise Overloaded(f"this replica holds {self.held} streams, its limit")
        self.held += 1
        return _SlotResponse(self, body)


class _SlotResponse(StreamingResponse):
    """Gives its slot back when it is done, however it ends (no wrapper per chunk)."""

    def __init__(self, slots: StreamSlots, body: AsyncIterator[bytes]) -> None:
        super().__init__(body, media_type="text/event-stream", headers=SSE_HEADERS)
        self._slots = slots

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        try:
            await super().__call__(scope, receive, send)
        finally:
            self._slots.held -= 1
