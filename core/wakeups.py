"""One pub/sub connection per process (per master, on a Redis Cluster), fanned out to the
local waiters of each session.

Pub/sub only wakes; Redis state decides. A waiter subscribes, then the caller
reads state, then waits. Waiters are also woken when their channel's
subscription is (re)confirmed, which happens after every reconnect, and when
the connection breaks, so a lost message costs latency, never correctness.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Iterable
from typing import Literal

import structlog
from redis.asyncio import Redis, RedisCluster

from core.connect import REDIS_ERRORS, RedisClient, stop_if_cancelled
from core.inbox import Inbox
from core.keys import Keys
from core.records import SessionStatus
from core.sharded_pubsub import ShardedChannels

log = structlog.stdlib.get_logger(__name__)


def publish_command(redis: RedisClient) -> Literal["PUBLISH", "SPUBLISH"]:
    """The command a script wakes a session's holder with: `SPUBLISH` on a Redis Cluster,
    where the hub subscribes with `SSUBSCRIBE` (the channel shares the session's slot)."""
    return "SPUBLISH" if isinstance(redis, RedisCluster) else "PUBLISH"


class Waiter(Inbox[bool]):
    """A local waiter for one session's wake-ups: an inbox where one wake-up stands for
    every one since the last wait (the caller reads state after each anyway)."""

    __slots__ = ("_subscribed",)

    def __init__(self) -> None:
        super().__init__()
        self._subscribed: asyncio.Future[None] | None = None

    def wake(self) -> None:
        if self.empty:
            self.put(True)

    def confirm(self) -> None:
        """The subscription is confirmed (or re-confirmed after a reconnect)."""
        if self._subscribed is not None and not self._subscribed.done():
            self._subscribed.set_result(None)
        self.wake()

    def expect_confirmation(self) -> None:
        """`wait_subscribed` will wait for `confirm`."""
        self._subscribed = asyncio.get_running_loop().create_future()

    async def wait(self, timeout: float) -> bool:  # noqa: ASYNC109 - every caller passes a bound
        """Wait for a wake-up or `timeout` seconds; True when woken."""
        return bool(await self.take(timeout))

    async def wait_subscribed(self, timeout: float) -> None:  # noqa: ASYNC109 - bounded
        """Until the subscription is confirmed, or `timeout` seconds (the poll covers a gap)."""
        if self._subscribed is None:
            return
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(timeout):
                await self._subscribed
        self._subscribed = None


class Watch:
    """One `WakeupHub.watch`: a plain object rather than a generator-based context manager,
    since one lives for as long as each stream is held."""

    __slots__ = ("_channel", "_hub", "_waiter")

    def __init__(self, hub: WakeupHub, channel: str) -> None:
        self._hub = hub
        self._channel = channel
        self._waiter = Waiter()

    async def __aenter__(self) -> Waiter:
        await self._hub._enter(self._channel, self._waiter)
        return self._waiter

    async def __aexit__(self, *exc_info: object) -> None:
        await self._hub._leave(self._channel, self._waiter)


class WakeupHub:
    """Multiplexes pub/sub to many local waiters: one connection to a single Redis, or on a
    Redis Cluster one connection per master, each channel on the master serving its slot."""

    def __init__(self, redis: RedisClient, keys: Keys, subscribe_timeout_s: float) -> None:
        self._keys = keys
        self._subscribe_timeout_s = subscribe_timeout_s
        self._waiters: dict[str, set[Waiter]] = {}
        self._channels: _PubSubChannels | ShardedChannels
        if isinstance(redis, RedisCluster):
            self._channels = ShardedChannels(redis, self)
        else:
            self._channels = _PubSubChannels(redis, keys.hub_channel, self)

    @property
    def connected(self) -> bool:
        """False while a pub/sub connection is broken: Redis is down or unreachable."""
        return self._channels.connected

    async def start(self) -> None:
        """Open the connection and start reading."""
        await self._channels.start()

    async def stop(self) -> None:
        """Stop reading and close the connection."""
        await self._channels.stop()

    @property
    def watched(self) -> int:
        """How many sessions have local waiters."""
        return len(self._waiters)

    def watch(self, session_id: str) -> Watch:
        """`async with hub.watch(id) as waiter`: subscribed to the session's wake-ups on
        entering; read state only after that."""
        return Watch(self, self._keys.wakeup_channel(session_id))

    def confirmed_at(self, session_id: str) -> str | None:
        """Where the subscription to the session's wake-ups is confirmed now: "" on a single
        Redis, the master's "host:port" on a cluster; None while it is not."""
        return self._channels.confirmed_at(self._keys.wakeup_channel(session_id))

    async def _enter(self, channel: str, waiter: Waiter) -> None:
        waiters = self._waiters.setdefault(channel, set())
        waiters.add(waiter)
        try:
            if len(waiters) == 1:
                waiter.expect_confirmation()
                await self._channels.subscribe(channel)
            # Bounded: if the confirmation is late, the status poll covers the gap.
            await waiter.wait_subscribed(self._subscribe_timeout_s)
        except BaseException:
            await self._leave(channel, waiter)
            raise
        waiter.clear()

    async def _leave(self, channel: str, waiter: Waiter) -> None:
        waiters = self._waiters.get(channel)
        if waiters is None:
            return
        waiters.discard(waiter)
        if not waiters:
            del self._waiters[channel]
            with contextlib.suppress(*REDIS_ERRORS):
                await self._channels.unsubscribe(channel)

    def dispatch(self, kind: str, channel: str) -> None:
        """Hand one pub/sub message to the channel's waiters: a (re)confirmed subscription
        (`subscribe`, `ssubscribe`) confirms and wakes them, a message wakes them."""
        for waiter in self._waiters.get(channel, ()):
            if kind in ("subscribe", "ssubscribe"):
                waiter.confirm()
            else:
                waiter.wake()

    def wake(self, channels: Iterable[str]) -> None:
        """Wake the waiters of `channels` (their subscription was lost: they re-read)."""
        for channel in channels:
            for waiter in self._waiters.get(channel, ()):
                waiter.wake()

    def wake_all(self) -> None:
        """Wake every local waiter (they re-read their state)."""
        self.wake(self._waiters)


class _PubSubChannels:
    """Every channel on one pub/sub connection to a single Redis."""

    def __init__(self, redis: Redis, standing_channel: str, hub: WakeupHub) -> None:
        self._pubsub = redis.pubsub()
        self._standing_channel = standing_channel
        self._hub = hub
        self._reader: asyncio.Task[None] | None = None
        self._confirmed: set[str] = set()
        self.connected = False

    async def start(self) -> None:
        # A standing subscription keeps the connection open while no session is watched.
        await self._pubsub.subscribe(self._standing_channel)
        self.connected = True
        self._reader = asyncio.create_task(self._read_forever(), name="wakeup-hub")

    async def stop(self) -> None:
        if self._reader is not None:
            self._reader.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._reader
            self._reader = None
        await self._pubsub.aclose()

    async def subscribe(self, channel: str) -> None:
        await self._pubsub.subscribe(channel)

    async def unsubscribe(self, channel: str) -> None:
        self._confirmed.discard(channel)
        await self._pubsub.unsubscribe(channel)

    def confirmed_at(self, channel: str) -> str | None:
        return "" if channel in self._confirmed else None

    async def _read_forever(self) -> None:
        while True:
            try:
                message = await self._pubsub.get_message(timeout=1.0)
            except REDIS_ERRORS as error:
                if self.connected:
                    log.warning("wakeup_connection_lost", error=str(error))  # every waiter is woken
                self.connected = False
                self._confirmed.clear()
                self._hub.wake_all()
                await asyncio.sleep(0.25)
                continue
            self.connected = True
            if message is not None:
                if message["type"] == "subscribe":
                    self._confirmed.add(message["channel"])
                self._hub.dispatch(message["type"], message["channel"])


class StatusPoller:
    """The safety net under pub/sub for sessions held pending on this process.

    Every `interval_s`, one pipelined read (in slices of `slice_size`) fetches the status
    of every session a local waiter holds, and wakes the waiters of those that left
    `pending`. A lost wake-up then costs at most one interval, at a cost that does not grow
    with round trips: ten thousand held streams are a few pipelines, not ten thousand
    timers and reads.
    """

    def __init__(
        self, redis: RedisClient, keys: Keys, interval_s: float, slice_size: int = 500
    ) -> None:
        self._redis = redis
        self._keys = keys
        self._interval_s = interval_s
        self._slice_size = slice_size
        self._waiting: dict[str, set[Waiter]] = {}

    def add(self, session_id: str, waiter: Waiter) -> None:
        """Wake `waiter` when a poll finds the session no longer pending (until `discard`)."""
        self._waiting.setdefault(session_id, set()).add(waiter)

    def discard(self, session_id: str, waiter: Waiter) -> None:
        waiters = self._waiting.get(session_id)
        if waiters is not None:
            waiters.discard(waiter)
            if not waiters:
                del self._waiting[session_id]

    async def run_forever(self) -> None:
        while True:
            stop_if_cancelled()  # a cancellation a library swallowed still ends the loop
            await asyncio.sleep(self._interval_s)
            try:
                await self.poll_once()
            except REDIS_ERRORS as error:
                stop_if_cancelled()
                log.warning("status_poll_failed", error=str(error))  # the next one retries

    async def poll_once(self) -> None:
        ids = list(self._waiting)
        for start in range(0, len(ids), self._slice_size):
            batch = ids[start : start + self._slice_size]
            async with self._redis.pipeline(transaction=False) as pipe:
                for session_id in batch:
                    pipe.hget(self._keys.session(session_id), "status")
                statuses: list[str | None] = await pipe.execute()
            for session_id, status in zip(batch, statuses, strict=True):
                if status != SessionStatus.PENDING:
                    for waiter in self._waiting.get(session_id, ()):
                        waiter.wake()
