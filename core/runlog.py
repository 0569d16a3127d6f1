"""A held request's event log in RedisClient, and the lease that says which replica writes it.

From its first approval notice on, a streamed request is a *run*: one replica (the lease
holder) drives its continuation and appends its events, in batches, to a bounded Redis
Stream; any replica can replay that stream to a client that re-attaches. Every append is
fenced: a replica whose lease lapsed (and was taken over) can no longer write.
"""

from __future__ import annotations

import asyncio
import time
from collections import defaultdict
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import orjson
from redis.asyncio import RedisCluster
from redis.crc import key_slot

from core import scripts
from core.connect import RedisClient
from core.keys import Keys

CLUSTER_RENEWALS = 16
"""Renewal calls in flight at once on a Redis Cluster (whose pools do not queue)."""


@dataclass(frozen=True, slots=True)
class Lease:
    """A held lease: its owner and fencing token."""

    log_id: str
    owner: str
    token: int

    @property
    def value(self) -> str:
        return f"{self.owner} {self.token}"


class RunLog:
    """Lease, append and replay for run logs."""

    def __init__(
        self,
        redis: RedisClient,
        keys: Keys,
        retention_s: int,
        maxlen: int = 10_000,
        background: RedisClient | None = None,
    ) -> None:
        self.redis = redis
        self.background = background or redis
        """Renewals go through this client, so a burst of requests cannot starve them."""
        self.keys = keys
        self.retention_s = retention_s
        self.maxlen = maxlen
        self._acquire = scripts.register(redis, scripts.ACQUIRE_LEASE)
        self._release = scripts.register(redis, scripts.RELEASE_LEASE)
        self._append = scripts.register(redis, scripts.APPEND_EVENTS)
        self._renew = scripts.register(self.background, scripts.RENEW_LEASES)

    async def acquire(
        self, log_id: str, owner: str, lease_ms: int, first: Mapping[str, str] | None = None
    ) -> Lease | None:
        """A new lease, or None while another owner's lease is live.

        The run is put in the index of runs first (`track`), so a run whose replica dies
        at any point after is found by the sweeper, however far it got. A new run's
        `first` meta fields (`seq`: the last id its client got before the run began, and
        how its chunks look) are written then too, so whoever takes it over, even before
        its first event is logged, numbers after every id its client got."""
        await self.track(log_id, lease_ms, first)
        token = await self._acquire(
            keys=[self.keys.lease(log_id), self.keys.fence(log_id)],
            args=[owner, lease_ms, self.retention_s],
        )
        return Lease(log_id, owner, int(token)) if token else None

    async def renew_all(
        self, leases: Sequence[Lease], lease_ms: int, slice_size: int = 500
    ) -> list[bool]:
        """Extend leases, one script call per `slice_size` of them (the event loop runs
        between slices); False for each that lapsed and is not ours any more. On a Redis
        Cluster one script may touch one slot only: one call per slot's leases, at most
        `CLUSTER_RENEWALS` at a time."""
        if not isinstance(self.background, RedisCluster):
            batches = [leases[i : i + slice_size] for i in range(0, len(leases), slice_size)]
            return [flag for batch in batches for flag in await self._renew_batch(batch, lease_ms)]
        by_slot: dict[int, list[int]] = defaultdict(list)
        for index, lease in enumerate(leases):
            by_slot[key_slot(self.keys.lease(lease.log_id).encode())].append(index)
        renewed = [False] * len(leases)
        slots = asyncio.Semaphore(CLUSTER_RENEWALS)

        async def renew(indexes: list[int]) -> None:
            async with slots:
                flags = await self._renew_batch([leases[i] for i in indexes], lease_ms)
            for index, flag in zip(indexes, flags, strict=True):
                renewed[index] = flag

        await asyncio.gather(*(renew(indexes) for indexes in by_slot.values()))
        return renewed

    async def _renew_batch(self, batch: Sequence[Lease], lease_ms: int) -> list[bool]:
        flags = await self._renew(
            keys=[self.keys.lease(lease.log_id) for lease in batch],
            args=[lease_ms, *(lease.value for lease in batch)],
        )
        return [bool(flag) for flag in flags]

    async def release(self, lease: Lease) -> None:
        await self._release(keys=[self.keys.lease(lease.log_id)], args=[lease.owner, lease.token])

    async def track(
        self, log_id: str, after_ms: int, first: Mapping[str, str] | None = None
    ) -> None:
        """Index the run, to be checked in `after_ms` (see `due`); with `first`, set those
        meta fields where they are not set yet."""
        check_at = int(time.time() * 1000) + after_ms
        async with self.redis.pipeline(transaction=False) as pipe:
            pipe.zadd(self._index(log_id), {log_id: check_at})
            if first:
                key = self.keys.run_meta(log_id)
                for name, value in first.items():
                    pipe.hsetnx(key, name, value)
                pipe.expire(key, self.retention_s)
            await pipe.execute()

    async def untrack(self, log_id: str) -> None:
        """The run ended: nobody needs to check on it any more."""
        await self.redis.zrem(self._index(log_id), log_id)

    def _index(self, log_id: str) -> str:
        return self.keys.runs(self.keys.shard(log_id))

    async def due(self, limit: int = 500) -> list[str]:
        """Runs whose next check is due: each is leased (checked again a lease later),
        ended (dropped from the index), or orphaned (returned, for a replica to take over)."""
        now_ms = int(time.time() * 1000)
        async with self.redis.pipeline(transaction=False) as pipe:
            for shard in self.keys.shards:
                pipe.zrangebyscore(self.keys.runs(shard), "-inf", now_ms, start=0, num=limit)
            shards: list[list[str]] = await pipe.execute()
        log_ids = [log_id for ids in shards for log_id in ids]
        if not log_ids:
            return []
        async with self.redis.pipeline(transaction=False) as pipe:
            for log_id in log_ids:
                pipe.pttl(self.keys.lease(log_id))
                pipe.hget(self.keys.run_meta(log_id), "done")
            replies = await pipe.execute()
        orphans: list[str] = []
        async with self.redis.pipeline(transaction=False) as pipe:
            for log_id, ttl_ms, done in zip(log_ids, replies[::2], replies[1::2], strict=True):
                if done:
                    pipe.zrem(self._index(log_id), log_id)
                elif ttl_ms > 0:
                    pipe.zadd(self._index(log_id), {log_id: now_ms + ttl_ms + 100})
                else:
                    orphans.append(log_id)
            await pipe.execute()
        return orphans

    async def logged_tool_events(self, log_id: str) -> set[tuple[str, str]]:
        """`(type, call id)` of every tool event in the run's log."""
        seen: set[tuple[str, str]] = set()
        after = 0
        while True:
            entries = await self.read_after(log_id, after, count=self.maxlen)
            for seq, raw in entries:
                event = orjson.loads(raw)  # every one: a call's arguments may say "k":"tool"
                if event.get("k") == "tool":
                    seen.add((event["type"], event["tool_call_id"]))
                after = seq
            if len(entries) < self.maxlen:
                return seen

    async def is_leased(self, log_id: str) -> bool:
        return bool(await self.redis.exists(self.keys.lease(log_id)))

    async def append(
        self, lease: Lease, events: Sequence[tuple[int, bytes]], meta: dict[str, str]
    ) -> bool:
        """Append `(seq, event JSON)` pairs and meta fields; False when fenced out."""
        pairs = [item for pair in meta.items() for item in pair]
        flat = [item for seq, event in events for item in (seq, event)]
        appended = await self._append(
            keys=[
                self.keys.lease(lease.log_id),
                self.keys.run_log(lease.log_id),
                self.keys.run_meta(lease.log_id),
            ],
            args=[
                lease.value,
                self.retention_s,
                self.maxlen,
                self.keys.wakeup_channel(lease.log_id),
                len(meta),
                *pairs,
                *flat,
            ],
        )
        return bool(appended)

    async def read_after(self, log_id: str, seq: int, count: int = 1000) -> list[tuple[int, str]]:
        """Logged events with a sequence number above `seq`, in order."""
        entries: list[tuple[str, dict[str, str]]] = await self.redis.xrange(  # type: ignore[assignment]
            self.keys.run_log(log_id), min=f"({seq}-1", max="+", count=count
        )
        return [(int(entry_id.split("-", 1)[0]), fields["e"]) for entry_id, fields in entries]

    async def meta(self, log_id: str) -> dict[str, str]:
        """The run's meta hash (empty when there is no run under this id)."""
        fields: dict[str, str] = await self.redis.hgetall(self.keys.run_meta(log_id))  # type: ignore[assignment]
        return fields
