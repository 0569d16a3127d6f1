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
import logging
from collections import Counter
from collections.abc import Callable, Coroutine, Iterable
from typing import Any, Literal

from redis.asyncio import Redis, RedisCluster
from redis.asyncio.cluster import ClusterNode
from redis.asyncio.connection import Connection
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import (
    MovedError,
    RedisClusterException,
    RedisError,
    ResponseError,
)
from redis.exceptions import TimeoutError as RedisTimeoutError

from core.connect import RedisClient
from core.keys import Keys

log = logging.getLogger(__name__)


def publish_command(redis: RedisClient) -> Literal["PUBLISH", "SPUBLISH"]:
    """The command a script wakes a session's holder with: `SPUBLISH` on a Redis Cluster,
    where the hub subscribes with `SSUBSCRIBE` (the channel shares the session's slot)."""
    return "SPUBLISH" if isinstance(redis, RedisCluster) else "PUBLISH"


class Waiter:
    """A local waiter for one session's wake-ups.

    Ten thousand of these may wait at once, so it holds a flag and, only while someone
    waits, one future (an `asyncio.Event` would carry a deque of its own for life).
    """

    __slots__ = ("_future", "_subscribed", "_woken")

    def __init__(self) -> None:
        self._woken = False
        self._future: asyncio.Future[None] | None = None
        self._subscribed: asyncio.Future[None] | None = None

    def wake(self) -> None:
        self._woken = True
        if self._future is not None and not self._future.done():
            self._future.set_result(None)

    def confirm(self) -> None:
        """The subscription is confirmed (or re-confirmed after a reconnect)."""
        if self._subscribed is not None and not self._subscribed.done():
            self._subscribed.set_result(None)
        self.wake()

    def expect_confirmation(self) -> None:
        """`wait_subscribed` will wait for `confirm`."""
        self._subscribed = asyncio.get_running_loop().create_future()

    def clear(self) -> None:
        """Forget wake-ups so far (the caller is about to read state anyway)."""
        self._woken = False

    async def wait(self, timeout: float) -> bool:  # noqa: ASYNC109 - every caller passes a bound
        """Wait for a wake-up or `timeout` seconds; True when woken."""
        if not self._woken:
            self._future = asyncio.get_running_loop().create_future()
            try:
                # asyncio.timeout, not wait_for: on 3.11 wait_for can swallow a cancellation
                # that races with the wake-up, and a cancelled holder must stop.
                async with asyncio.timeout(timeout):
                    await self._future
            except TimeoutError:
                return False
            finally:
                self._future = None
        self._woken = False
        return True

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
            with contextlib.suppress(RedisConnectionError, RedisTimeoutError, OSError):
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
            except (RedisConnectionError, RedisTimeoutError, OSError) as error:
                if self.connected:
                    log.warning("wake-up connection lost (%s); waking every waiter", error)
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


_LINK_ERRORS = (RedisConnectionError, RedisTimeoutError, OSError)


class _ShardLink:
    """One connection to one master, carrying the sharded subscriptions of its slots."""

    __slots__ = ("address", "channels", "confirmed", "connection", "leaving", "opened", "reader")

    def __init__(
        self,
        address: str,
        connection: Connection,
        open_link: Callable[[_ShardLink], Coroutine[Any, Any, None]],
    ) -> None:
        self.address = address
        self.connection = connection
        self.channels: set[str] = set()
        """The channels subscribed here, or being subscribed."""
        self.confirmed: set[str] = set()
        """The channels whose subscription here the node confirmed."""
        self.leaving: Counter[str] = Counter()
        """SUNSUBSCRIBEs sent here and not yet answered, by channel."""
        self.reader: asyncio.Task[None] | None = None
        """Reads the connection, once it is open."""
        self.opened = asyncio.create_task(open_link(self), name=f"wakeup-hub-open-{address}")


class ShardedChannels:
    """Sharded pub/sub on a Redis Cluster (7.0 or later): each channel is subscribed
    (`SSUBSCRIBE`) on the master serving its slot, over one connection per master. Scripts
    wake with `SPUBLISH`, which reaches only that master and its replicas.

    A channel moves when its master stops serving its slot: the server revokes the
    subscription (an unasked `sunsubscribe`, after a failover or a slot migration) or
    refuses it (`MOVED`, `CLUSTERDOWN`), or the connection breaks. Its waiters are woken
    (they re-read state), the slot map is read again, and the channel is subscribed where
    its slot lives now, whose confirmation wakes them once more.
    """

    def __init__(self, cluster: RedisCluster, hub: WakeupHub, retry_s: float = 0.1) -> None:
        self._cluster = cluster
        self._hub = hub
        self._retry_s = retry_s
        self._masters: dict[int, str] = {}
        """Slot -> the address ("host:port") of the master serving it, as last read."""
        self._links: dict[str, _ShardLink] = {}
        self._homes: dict[str, _ShardLink] = {}
        """Channel -> the link it is subscribed (or being subscribed) on."""
        self._strays: set[str] = set()
        """Watched channels without a home, for the next repair to place."""
        self._witness: str | None = None
        """A node that just gave up (or claimed) a slot: the first whose slot map is current."""
        self._repair_due = asyncio.Event()
        self._repairer: asyncio.Task[None] | None = None
        self._failures = 0
        self.connected = False

    def confirmed_at(self, channel: str) -> str | None:
        link = self._homes.get(channel)
        return link.address if link is not None and channel in link.confirmed else None

    async def start(self) -> None:
        await self._read_slot_map()
        self.connected = True
        self._repairer = asyncio.create_task(self._repair_forever(), name="wakeup-hub-repair")

    async def stop(self) -> None:
        links = list(self._links.values())
        tasks = [self._repairer, *(t for link in links for t in (link.opened, link.reader))]
        running = [task for task in tasks if task is not None]
        for task in running:
            task.cancel()
        await asyncio.gather(*running, return_exceptions=True)
        for link in links:
            await link.connection.disconnect(nowait=True)
        self._links.clear()
        self._homes.clear()
        self._strays.clear()

    async def subscribe(self, channel: str) -> None:
        """Subscribe on the master serving the channel's slot; a channel that cannot be
        (its master is down, the slot map is stale) waits for the next repair."""
        self._strays.discard(channel)
        address = self._masters.get(self._cluster.keyslot(channel))
        if address is None:
            self._evict(None, [channel])
            return
        link = self._link(address)
        link.channels.add(channel)
        self._homes[channel] = link
        await asyncio.shield(link.opened)
        if self._homes.get(channel) is not link:
            return  # left, or its link failed, while connecting
        try:
            await link.connection.send_command("SSUBSCRIBE", channel, check_health=False)
        except _LINK_ERRORS as error:
            await self._drop(link, error)

    async def unsubscribe(self, channel: str) -> None:
        self._strays.discard(channel)
        link = self._homes.pop(channel, None)
        if link is None:
            return
        link.channels.discard(channel)
        link.confirmed.discard(channel)
        if link.reader is not None:  # else still connecting: nothing was sent yet
            link.leaving[channel] += 1
            await link.connection.send_command("SUNSUBSCRIBE", channel, check_health=False)

    def _link(self, address: str) -> _ShardLink:
        link = self._links.get(address)
        if link is None:
            # A node built as the client builds its own (same name, timeouts, credentials),
            # speaking RESP2, where pub/sub messages are read as replies (not push frames).
            options: dict[str, Any] = {**self._cluster.get_connection_kwargs(), "protocol": 2}
            host, port = address.rsplit(":", 1)
            node = ClusterNode(host, int(port), **options)
            link = self._links[address] = _ShardLink(address, node.acquire_connection(), self._open)
        return link

    async def _open(self, link: _ShardLink) -> None:
        try:
            await link.connection.connect()  # type: ignore[no-untyped-call]
        except _LINK_ERRORS as error:
            await self._drop(link, error)
            return
        if self._links.get(link.address) is link:
            link.reader = asyncio.create_task(self._read(link), name=f"wakeup-hub-{link.address}")
        else:  # retired while connecting
            await link.connection.disconnect(nowait=True)

    async def _read(self, link: _ShardLink) -> None:
        while True:
            try:
                reply = await link.connection.read_response(timeout=1.0)
            except MovedError as error:
                self._moved(link, error)
                continue
            except (ResponseError, *_LINK_ERRORS) as error:
                # CLUSTERDOWN, TRYAGAIN...: the command it answers is not known; start over.
                await self._drop(link, error)
                return
            if isinstance(reply, list) and len(reply) == 3:
                self._receive(link, str(reply[0]), str(reply[1]))

    def _receive(self, link: _ShardLink, kind: str, channel: str) -> None:
        if kind == "smessage":
            self._hub.dispatch("message", channel)
        elif kind == "ssubscribe" and self._homes.get(channel) is link:
            link.confirmed.add(channel)
            self._hub.dispatch(kind, channel)
        elif kind == "sunsubscribe" and link.leaving[channel] > 0:
            link.leaving[channel] -= 1
            if not link.leaving[channel]:
                del link.leaving[channel]
        elif kind == "sunsubscribe" and self._homes.get(channel) is link:
            # Unasked: this node no longer serves the channel's slot.
            self._witness = link.address
            self._evict(link, [channel])

    def _moved(self, link: _ShardLink, error: MovedError) -> None:
        """A command sent here was for a slot that lives elsewhere now."""
        host = error.host or link.address.rsplit(":", 1)[0]  # "MOVED 42 :7001": same host
        self._masters[error.slot_id] = self._witness = f"{host}:{error.port}"
        moved = [c for c in link.channels if self._cluster.keyslot(c) == error.slot_id]
        for channel in [c for c in link.leaving if self._cluster.keyslot(c) == error.slot_id]:
            del link.leaving[channel]
        self._evict(link, moved)

    def _evict(self, link: _ShardLink | None, channels: list[str]) -> None:
        """Make `channels` strays: wake their waiters, and have the repair place them."""
        if not channels:
            return
        for channel in channels:
            if link is not None:
                link.channels.discard(channel)
                link.confirmed.discard(channel)
                self._homes.pop(channel, None)
            self._strays.add(channel)
        self._hub.wake(channels)
        self._repair_due.set()

    async def _drop(self, link: _ShardLink, error: Exception) -> None:
        """Close a link that failed; its channels become strays."""
        if self._links.get(link.address) is not link:
            return  # dropped already
        # Once per outage: while a master is down, every repair pass fails to reach it.
        report = log.warning if self.connected else log.debug
        report("wake-up link to %s lost (%s); moving its channels", link.address, error)
        self._failures += 1
        self.connected = False
        self._evict(link, list(link.channels))
        self._repair_due.set()  # even with no channel to move: to find the cluster whole
        await self._close(link)

    async def _close(self, link: _ShardLink) -> None:
        if self._links.get(link.address) is link:
            del self._links[link.address]
        if link.reader is not None and link.reader is not asyncio.current_task():
            link.reader.cancel()
        await link.connection.disconnect(nowait=True)

    async def _repair_forever(self) -> None:
        pause = self._retry_s
        while True:
            await self._repair_due.wait()
            self._repair_due.clear()
            await self._repair()
            # A pass at most every `pause`, longer while passes fail (a master is down).
            pause = self._retry_s if self.connected else min(pause * 2, 2.0)
            await asyncio.sleep(pause)

    async def _repair(self) -> None:
        """Read the slot map, then subscribe every stray where its slot lives now (and move
        the channels of a node that is no longer a master)."""
        failures = self._failures
        witness, self._witness = self._witness, None
        try:
            await self._read_slot_map(witness)
        except (RedisError, RedisClusterException, OSError) as error:
            log.warning("reading the cluster's slot map failed (%s); retrying", error)
            self.connected = False
            self._repair_due.set()
            return
        masters = set(self._masters.values())
        for link in list(self._links.values()):
            if link.address not in masters:
                self._evict(link, list(link.channels))
                await self._close(link)
        for channel in list(self._strays):
            if channel in self._strays:
                await self.subscribe(channel)
        self.connected = self._failures == failures and not self._strays

    async def _read_slot_map(self, witness: str | None = None) -> None:
        # Other nodes learn of a failover by gossip, a moment later than the node that
        # failed over, and a replica accepts SSUBSCRIBE for its master's slots: reading a
        # stale map would leave the channels on the old master. So ask the witness first.
        node = None if witness is None else self._cluster.get_node(node_name=witness)
        options = {} if node is None else {"target_nodes": node}
        # redis-py parses CLUSTER SLOTS into {(first, last): {"primary": (host, port), ...}}.
        ranges: dict[tuple[int, int], dict[str, Any]] = await self._cluster.execute_command(
            "CLUSTER SLOTS", **options
        )
        masters: dict[int, str] = {}
        for (first, last), nodes in ranges.items():
            host, port = nodes["primary"]
            masters.update(dict.fromkeys(range(int(first), int(last) + 1), f"{host}:{port}"))
        self._masters = masters


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
