"""Expires overdue sessions and adopts orphaned runs, one replica at a time, so a session
with no holder still ends and a run whose replica died still reaches its end."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable

import structlog

from core.connect import REDIS_ERRORS, stop_if_cancelled
from core.records import SessionStatus
from core.round_lock import RoundLock
from core.store import SessionStore

log = structlog.stdlib.get_logger(__name__)


class Sweeper:
    """Every `interval_s`, the replica that wins a short lock expires overdue sessions."""

    def __init__(
        self,
        store: SessionStore,
        owner: str,
        interval_s: float = 0.5,
        adopt_orphans: Callable[[], Awaitable[int]] | None = None,
    ) -> None:
        self.store = store
        self.owner = owner
        self.interval_s = interval_s
        self.adopt_orphans = adopt_orphans
        # Twice the interval: the holder renews it every round, and it lapses soon after.
        self.lock = RoundLock(store.redis, store.keys.sweeper_lock, owner, 2 * interval_s)

    async def run_forever(self) -> None:
        while True:
            stop_if_cancelled()  # a cancellation a library swallowed still ends the loop
            try:
                await self.sweep_once()
            except Exception as error:  # Redis away, or a bug: the next sweep tries again
                stop_if_cancelled()
                trace = not isinstance(error, REDIS_ERRORS)
                log.warning("sweep_skipped", error=str(error), exc_info=trace)
            await asyncio.sleep(self.interval_s)

    async def sweep_once(self) -> int:
        """Expire what is overdue if this replica holds the lock; how many were expired."""
        if not await self.lock.hold():
            return 0
        expired = 0
        for session_id in await self.store.overdue():
            if await self.store.expire_if_overdue(session_id) is SessionStatus.EXPIRED:
                expired += 1
        if self.adopt_orphans is not None:
            await self.adopt_orphans()
        return expired
