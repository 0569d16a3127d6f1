"""One pub/sub connection per process, fanned out to the local waiters of each session.

Pub/sub only wakes; Redis state decides. A waiter subscribes, then the caller
reads state, then waits. Waiters are also woken when their channel's
subscription is (re)confirmed, which happens after every reconnect, and when
the connection breaks, so a lost message costs latency, never correctness.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncIterator, Iterator

from redis.asyncio import Redis
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import TimeoutError as RedisTimeoutError

from core.keys import Keys

log = logging.getLogger(__name__)


class Waiter:
    """A local waiter for one session's wake-ups."""

    def __init__(self) -> None:
        self._event = asyncio.Event()
        self.subscribed = asyncio.Event()

    def wake(self) -> None:
        self._event.set()

    def clear(self) -> None:
        """Forget wake-ups so far (the caller is about to read state anyway)."""
        self._event.clear()

    async def wait(self, timeout: float) -> bool:  # noqa: ASYNC109 - every caller passes a bound
        """Wait for a wake-up or `timeout` seconds; True when woken."""
        try:
            # asyncio.timeout, not wait_for: on 3.11 wait_for can swallow a cancellation
            # that races with the wake-up, and a cancelled holder must stop.
            async with asyncio.timeout(timeout):
                await self._event.wait()
        except TimeoutError:
            return False
        finally:
            self._event.clear()
        return True


class WakeupHub:
    """Multiplexes one Redis pub/sub connection to many local waiters."""

    def __init__(self, redis: Redis, keys: Keys, subscribe_timeout_s: float) -> None:
        self._pubsub = redis.pubsub()
        self._keys = keys
        self._subscribe_timeout_s = subscribe_timeout_s
        self._waiters: dict[str, set[Waiter]] = {}
        self._reader: asyncio.Task[None] | None = None
        self.connected = False
        """False while the pub/sub connection is broken: Redis is down or unreachable."""

    async def start(self) -> None:
        """Open the connection and start reading."""
        # A standing subscription keeps the connection open while no session is watched.
        await self._pubsub.subscribe(self._keys.hub_channel)
        self.connected = True
        self._reader = asyncio.create_task(self._read_forever(), name="wakeup-hub")

    async def stop(self) -> None:
        """Stop reading and close the connection."""
        if self._reader is not None:
            self._reader.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._reader
            self._reader = None
        await self._pubsub.aclose()  # type: ignore[no-untyped-call]

    @property
    def watched(self) -> int:
        """How many sessions have local waiters."""
        return len(self._waiters)

    @contextlib.asynccontextmanager
    async def watch(self, session_id: str) -> AsyncIterator[Waiter]:
        """Subscribe to a session's wake-ups; read state only after entering."""
        channel = self._keys.wakeup_channel(session_id)
        waiter = Waiter()
        waiters = self._waiters.setdefault(channel, set())
        waiters.add(waiter)
        try:
            if len(waiters) == 1:
                await self._pubsub.subscribe(channel)
            else:
                waiter.subscribed.set()
            # Bounded: if the confirmation is late, the periodic re-read covers the gap.
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(self._subscribe_timeout_s):
                    await waiter.subscribed.wait()
            waiter.clear()
            yield waiter
        finally:
            waiters.discard(waiter)
            if not waiters:
                del self._waiters[channel]
                with contextlib.suppress(RedisConnectionError, RedisTimeoutError, OSError):
                    await self._pubsub.unsubscribe(channel)

    async def _read_forever(self) -> None:
        while True:
            try:
                message = await self._pubsub.get_message(timeout=1.0)
            except (RedisConnectionError, RedisTimeoutError, OSError) as error:
                if self.connected:
                    log.warning("wake-up connection lost (%s); waking every waiter", error)
                self.connected = False
                self.wake_all()
                await asyncio.sleep(0.25)
                continue
            self.connected = True
            if message is not None:
                self._dispatch(message["type"], message["channel"])

    def _dispatch(self, kind: str, channel: str) -> None:
        for waiter in self._waiters.get(channel, ()):
            if kind == "subscribe":
                waiter.subscribed.set()
            waiter.wake()

    def wake_all(self) -> None:
        """Wake every local waiter (they re-read their state)."""
        for waiters in self._waiters.values():
            for waiter in waiters:
                waiter.wake()


class StatusPoller:
    """The safety net under pub/sub for sessions held pending on this process.

    Every `interval_s`, one pipelined read (in slices of `slice_size`) fetches the status
    of every session a local waiter holds, and wakes the waiters of those that left
    `pending`. A lost wake-up then costs at most one interval, at a cost that does not grow
    with round trips: ten thousand held streams are a few pipelines, not ten thousand
    timers and reads.
    """

    def __init__(self, redis: Redis, keys: Keys, interval_s: float, slice_size: int = 500) -> None:
        self._redis = redis
        self._keys = keys
        self._interval_s = interval_s
        self._slice_size = slice_size
        self._waiting: dict[str, set[Waiter]] = {}

    @property
    def waiting(self) -> int:
        return len(self._waiting)

    @contextlib.contextmanager
    def poll(self, session_id: str, waiter: Waiter) -> Iterator[None]:
        """Wake `waiter` when a poll finds the session no longer pending."""
        waiters = self._waiting.setdefault(session_id, set())
        waiters.add(waiter)
        try:
            yield
        finally:
            waiters.discard(waiter)
            if not waiters:
                del self._waiting[session_id]

    async def run_forever(self) -> None:
        while True:
            await asyncio.sleep(self._interval_s)
            try:
                await self.poll_once()
            except (RedisConnectionError, RedisTimeoutError, OSError) as error:
                log.warning("status poll failed (%s); the next one retries", error)

    async def poll_once(self) -> None:
        ids = list(self._waiting)
        for start in range(0, len(ids), self._slice_size):
            batch = ids[start : start + self._slice_size]
            async with self._redis.pipeline(transaction=False) as pipe:
                for session_id in batch:
                    pipe.hget(self._keys.session(session_id), "status")
                statuses: list[str | None] = await pipe.execute()
            for session_id, status in zip(batch, statuses, strict=True):
                if status != "pending":
                    for waiter in self._waiting.get(session_id, ()):
                        waiter.wake()
