"""Client calls handed to the client: which session each belongs to, for its next request.

An approved call of a client-declared tool goes back to the client under the gateway's id,
alone: the turn's other calls (server-side, rejected, answered) and their tool messages stay
here. When the client's next request carries those ids, the gateway finds the session and
puts the whole turn back into the history the model sees.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping

from core.connect import RedisClient
from core.keys import Keys


class Handoffs:
    """Call id -> session id, for the calls released to clients."""

    def __init__(self, redis: RedisClient, keys: Keys, ttl_s: int) -> None:
        self.redis = redis
        self.keys = keys
        self.ttl_s = ttl_s

    async def record(self, session_id: str, call_ids: Iterable[str]) -> None:
        async with self.redis.pipeline(transaction=False) as pipe:
            for call_id in call_ids:
                pipe.set(self.keys.handoff(call_id), session_id, ex=self.ttl_s)
            await pipe.execute()

    async def sessions_of(self, call_ids: list[str]) -> Mapping[str, str]:
        """The released calls among `call_ids`, with their sessions."""
        if not call_ids:
            return {}
        found: list[str | None] = await self.redis.mget(  # type: ignore[assignment]
            [self.keys.handoff(i) for i in call_ids]
        )
        return {
            call_id: session for call_id, session in zip(call_ids, found, strict=True) if session
        }
