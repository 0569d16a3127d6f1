"""Server-sent events: framing and the streaming response that holds a replica slot."""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

import orjson
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import TimeoutError as RedisTimeoutError
from starlette.responses import StreamingResponse

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
        return StreamingResponse(
            self._release_after(body), media_type="text/event-stream", headers=SSE_HEADERS
        )

    async def _release_after(self, body: AsyncIterator[bytes]) -> AsyncIterator[bytes]:
        try:
            async for part in body:
                yield part
        finally:
            self.held -= 1
