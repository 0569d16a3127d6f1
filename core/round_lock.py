"""A lock that one process at a time holds for a periodic job, kept across its rounds."""

from __future__ import annotations

from redis.asyncio.lock import Lock
from redis.exceptions import LockError

from core.connect import RedisClient

MIN_HOLD_S = 0.1
"""The shortest hold: the lock always expires, so a holder that dies frees it."""


class RoundLock:
    """`redis.asyncio.lock.Lock` used once per round: the holder renews it, anyone takes it
    when it is free, and it expires `hold_s` after the holder last renewed it."""

    def __init__(self, redis: RedisClient, name: str, owner: str, hold_s: float) -> None:
        # Not thread-local: the token is the process's, whichever task runs the round.
        self._lock: Lock = redis.lock(
            name, timeout=max(hold_s, MIN_HOLD_S), blocking=False, thread_local=False
        )
        self.owner = owner
        """Stored as the lock's value, so an operator can see who holds it."""

    async def hold(self) -> bool:
        """Whether this process holds the lock for the next `hold_s`: renewed if it held it
        (one round trip), else taken if it is free."""
        try:
            await self._lock.reacquire()
        except LockError:  # never held, or it expired and maybe another holder took it
            taken: bool = await self._lock.acquire(token=self.owner)
            return taken
        return True
