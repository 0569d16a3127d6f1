"""Sharded pub/sub on a Redis Cluster for the wake-up hub (`core.wakeups`): one connection
per master, each channel subscribed where its slot lives, moved when the slot moves."""

from __future__ import annotations

import asyncio
from collections import Counter
from collections.abc import Callable, Coroutine
from typing import TYPE_CHECKING, Any

import structlog
from redis.asyncio import RedisCluster
from redis.asyncio.cluster import ClusterNode
from redis.asyncio.connection import Connection
from redis.exceptions import MovedError

from core.connect import REDIS_ERRORS

if TYPE_CHECKING:
    from core.wakeups import WakeupHub

log = structlog.stdlib.get_logger(__name__)


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
        except REDIS_ERRORS as error:
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
        except REDIS_ERRORS as error:
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
            except REDIS_ERRORS as error:
                # An error reply (CLUSTERDOWN, TRYAGAIN...) or a lost link: the command it
                # answers is not known; start over.
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
        report("wakeup_link_lost", node=link.address, error=str(error))  # channels move
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
        except REDIS_ERRORS as error:
            log.warning("slot_map_read_failed", error=str(error))  # retried
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
