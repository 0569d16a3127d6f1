"""A held request's event log in Redis, and the lease that says which replica writes it.

From its first approval notice on, a streamed request is a *run*: one replica (the lease
holder) drives its continuation and appends its events, in batches, to a bounded Redis
Stream; any replica can replay that stream to a client that re-attaches. Every append is
fenced: a replica whose lease lapsed (and was taken over) can no longer write.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from redis.asyncio import Redis

from core import scripts
from core.keys import Keys


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
        redis: Redis,
        keys: Keys,
        retention_s: int,
        maxlen: int = 10_000,
        background: Redis | None = None,
    ) -> None:
        self.redis = redis
        self.background = background or redis
        """Renewals go through this client, so a burst of requests cannot starve them."""
        self.keys = keys
        self.retention_s = retention_s
        self.maxlen = maxlen
        self._acquire = redis.register_script(scripts.ACQUIRE_LEASE)
        self._release = redis.register_script(scripts.RELEASE_LEASE)
        self._append = redis.register_script(scripts.APPEND_EVENTS)
        self._renew = self.background.register_script(scripts.RENEW_LEASES)

    async def acquire(self, log_id: str, owner: str, lease_ms: int) -> Lease | None:
        """A new lease, or None while another owner's lease is live."""
        token = await self._acquire(
            keys=[self.keys.lease(log_id), self.keys.fence(log_id)],
            args=[owner, lease_ms, self.retention_s],
        )
        return Lease(log_id, owner, int(token)) if token else None

    async def renew_all(
        self, leases: Sequence[Lease], lease_ms: int, slice_size: int = 500
    ) -> list[bool]:
        """Extend leases, one script call per `slice_size` of them (the event loop runs
        between slices); False for each that lapsed and is not ours any more."""
        renewed: list[bool] = []
        for start in range(0, len(leases), slice_size):
            batch = leases[start : start + slice_size]
            flags = await self._renew(
                keys=[self.keys.lease(lease.log_id) for lease in batch],
                args=[lease_ms, *(lease.value for lease in batch)],
            )
            renewed += [bool(flag) for flag in flags]
        return renewed

    async def release(self, lease: Lease) -> None:
        await self._release(keys=[self.keys.lease(lease.log_id)], args=[lease.owner, lease.token])

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
