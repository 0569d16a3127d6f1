"""The audit log: every approval event, in one Redis Stream per tenant, bounded in size and age.

An entry is flat: `event`, `session`, `tool`, `call`, `actor`, `tenant` (empty when they
do not apply) and `detail` (JSON). Events: `requested`, `auto_approved`, `denied`,
`granted_run` (a call covered by a grant ran without asking), `decided`, `granted`,
`refused` (a decision the gateway turned down, with why), `expired`, `executed`. The
stream id orders entries and gives their time.

An entry's `tenant` picks its stream (`Keys.audit_of`), so one tenant's flood trims only
its own history; entries of no tenant go to the system stream. Each stream keeps about
`maxlen` entries and none older than `retention_s`. `Keys.audit_tenants` lists the
streams; reading every tenant merges them in id order.

`AuditLog.follow` is how a live feed (`GET /v1/approvals/events`) learns that a stream
grew: one task per process reads the last id of every followed stream, every
`FOLLOW_POLL_S`, in one pipeline, and wakes the followers of the streams that changed.
Polling costs one round trip per interval per process, however many follow; a blocking
XREAD per follower would hold a pooled connection each.
"""

from __future__ import annotations

import asyncio
import contextlib
import heapq
import time
from collections.abc import AsyncIterator, Callable, Collection, Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

import orjson
import structlog

from core.connect import RedisClient, RedisPipeline
from core.keys import Keys
from core.records import ApprovalSession, ToolCall
from core.settings import Settings

log = structlog.stdlib.get_logger(__name__)

FIELDS = ("event", "session", "tool", "call", "actor", "tenant")
FOLLOW_POLL_S = 0.25
"""How often a process with followers looks for new audit entries."""
_RETENTION_S: int = Settings.model_fields["audit_retention_s"].default
_Ordered = tuple[tuple[int, int], dict[str, Any]]  # an entry with its id as numbers


@dataclass(frozen=True, slots=True)
class AuditEntry:
    """One event to append."""

    event: str
    session: str = ""
    tool: str = ""
    call: str = ""
    actor: str = ""
    tenant: str = ""
    detail: Mapping[str, Any] = field(default_factory=dict)

    @classmethod
    def of_call(
        cls, event: str, session: ApprovalSession, call: ToolCall, actor: str, **detail: Any
    ) -> AuditEntry:
        """An event about one call of a session."""
        return cls(event, session.id, call.name, call.id, actor, session.tenant, detail)

    def fields(self) -> dict[str, str]:
        flat = {name: getattr(self, name) for name in FIELDS}
        flat["detail"] = orjson.dumps(self.detail).decode()
        return flat


class AuditLog:
    """Appends to the tenants' audit streams and reads them back in time order."""

    def __init__(
        self, redis: RedisClient, keys: Keys, maxlen: int, retention_s: int = _RETENTION_S
    ) -> None:
        self.redis = redis
        self.keys = keys
        self.maxlen = maxlen
        """Per tenant's stream, approximate."""
        self.retention_ms = retention_s * 1000
        self._bell = _Bell(redis)

    def add_to(self, pipe: RedisPipeline, entries: Iterable[AuditEntry]) -> None:
        """Queue appends on a pipeline another write goes out on (one round trip for both)."""
        # XADD takes MAXLEN or MINID, not both. The age bound rides on every XADD, exact:
        # a quiet tenant's stream is small, and `~` keeps a whole node (up to 100 entries,
        # possibly months of them) past the retention. The size bound only stops a flood,
        # where a node of slack does not matter: one XTRIM MAXLEN ~ per stream per batch.
        # The age is by this process's clock; skew against Redis's shifts it by as much.
        oldest_ms = int(time.time() * 1000) - self.retention_ms
        batch = list(entries)
        tenants = {self.keys.audit_of(entry.tenant): entry.tenant for entry in batch}
        if tenants:  # listed before the first entry lands: a reader of every tenant sees it
            pipe.sadd(self.keys.audit_tenants, *tenants.values())
        for entry in batch:
            key = self.keys.audit_of(entry.tenant)
            pipe.xadd(key, entry.fields(), minid=oldest_ms, approximate=False)  # type: ignore[arg-type]
        for key in tenants:
            pipe.xtrim(key, maxlen=self.maxlen, approximate=True)
            # A stream without an append for the whole retention holds only expired entries.
            pipe.pexpire(key, self.retention_ms)

    async def append(self, entries: Iterable[AuditEntry]) -> None:
        batch = list(entries)
        if not batch:
            return
        async with self.redis.pipeline(transaction=False) as pipe:
            self.add_to(pipe, batch)
            await pipe.execute()

    async def tenants(self) -> list[str]:
        """The tenants that have an audit stream ("" for the system stream), sorted."""
        members: set[str] = await self.redis.smembers(self.keys.audit_tenants)  # type: ignore[assignment]
        return sorted(members)

    async def entries(
        self,
        *,
        tenant: str | None = None,
        since_ms: int | None = None,
        until_ms: int | None = None,
        after: str | None = None,
        batch: int = 1000,
    ) -> AsyncIterator[dict[str, Any]]:
        """Entries in id (time) order, from `since_ms` (or after the id `after`) to `until_ms`:
        one tenant's ("" for the system stream), or with `tenant` None every stream's,
        merged (entries of two streams with the same id come out by tenant). Each stream
        is read in batches of `batch`."""
        low = f"({after}" if after else (str(since_ms) if since_ms is not None else "-")
        high = str(until_ms) if until_ms is not None else "+"
        tenants = [tenant] if tenant is not None else await self.tenants()
        streams = [self._read(self.keys.audit_of(t), low, high, batch) for t in tenants]
        async for entry in _merged(streams):
            yield entry

    async def page(
        self,
        *,
        tenant: str | None,
        since_ms: int | None,
        until_ms: int | None,
        after: str | None,
        limit: int,
        accept: Callable[[dict[str, Any]], bool],
    ) -> list[dict[str, Any]]:
        """Up to `limit` entries that `accept` takes, in time order, and any more that share
        the last one's id (two tenants' streams can give the same id): the next page, read
        `after` the last id from every stream, neither repeats nor skips one. Entries of
        Redis's current millisecond wait for the next page, as another may still get that
        millisecond's id after this read."""
        seconds, micros = await self.redis.time()
        settled_ms = seconds * 1000 + micros // 1000 - 1
        high = settled_ms if until_ms is None else min(until_ms, settled_ms)
        found: list[dict[str, Any]] = []
        entries = self.entries(
            tenant=tenant, since_ms=since_ms, until_ms=high, after=after, batch=max(100, limit + 1)
        )
        async for entry in entries:
            if len(found) >= limit and entry["id"] != found[-1]["id"]:
                break
            if accept(entry):
                found.append(entry)
        return found

    async def settled_ms(self) -> int:
        """The last millisecond no new entry can get an id in (Redis's clock, less one)."""
        seconds, micros = await self.redis.time()
        return int(seconds) * 1000 + int(micros) // 1000 - 1

    async def read_settled(
        self, tenant: str | None, after: str, limit: int
    ) -> list[dict[str, Any]]:
        """Up to `limit` entries after the id `after`, in id order, of one tenant's stream or
        (`tenant` None) every tenant's merged, up to the settled millisecond: an entry that a
        later read could still find before the last one returned is never returned, so a
        reader resuming after the last id it got misses nothing. Entries of other tenants
        that share the last one's id come too (a read `after` that id would skip them)."""
        found: list[dict[str, Any]] = []
        high = await self.settled_ms()
        entries = self.entries(tenant=tenant, after=after, until_ms=high, batch=max(100, limit))
        async for entry in entries:
            if len(found) >= limit and entry["id"] != found[-1]["id"]:
                break
            found.append(entry)
        return found

    def stream_keys(self, tenants: Iterable[str]) -> list[str]:
        return [self.keys.audit_of(tenant) for tenant in tenants]

    @contextlib.asynccontextmanager
    async def follow(self, keys: Collection[str]) -> AsyncIterator[Follower]:
        """Be woken while inside when one of the streams `keys` grows (`Follower.wait`)."""
        follower = Follower(self._bell, set(keys))
        self._bell.add(follower)
        try:
            yield follower
        finally:
            self._bell.remove(follower)

    async def _read(self, key: str, low: str, high: str, batch: int) -> AsyncIterator[_Ordered]:
        """One stream's entries from `low` to `high`, each with its id as numbers."""
        while True:
            rows: list[tuple[str, dict[str, str]]] = await self.redis.xrange(  # type: ignore[assignment]
                key, low, high, count=batch
            )
            for entry_id, values in rows:
                at_ms, sequence = entry_id.split("-", 1)
                yield (int(at_ms), int(sequence)), as_json(entry_id, values)
            if len(rows) < batch:
                return
            low = f"({rows[-1][0]}"


class Follower:
    """One reader of audit streams, woken when one of them grows."""

    def __init__(self, bell: _Bell, keys: set[str]) -> None:
        self._bell = bell
        self.keys = keys
        self._grown = asyncio.Event()
        self._grown.set()  # read once at the start, whatever the bell knows

    def update(self, keys: Collection[str]) -> None:
        """Follow these streams instead (an admin's feed gains a new tenant's)."""
        if set(keys) != self.keys:
            self._bell.remove(self)
            self.keys = set(keys)
            self._bell.add(self)
            self._grown.set()

    def ring(self) -> None:
        self._grown.set()

    async def wait(self, within: float) -> bool:
        """Until a followed stream grew since the last call, or for `within` seconds;
        whether it grew."""
        try:
            await asyncio.wait_for(self._grown.wait(), max(within, 0.0))
        except TimeoutError:
            return False
        self._grown.clear()
        return True


class _Bell:
    """One task per process: the last id of every followed stream, read every
    `FOLLOW_POLL_S`; the followers of a stream whose last id changed are rung. A stream
    seen for the first time rings too (its followers read it once more)."""

    def __init__(self, redis: RedisClient) -> None:
        self._redis = redis
        self._followers: dict[str, set[Follower]] = {}
        self._last: dict[str, str] = {}
        self._task: asyncio.Task[None] | None = None

    def add(self, follower: Follower) -> None:
        for key in follower.keys:
            self._followers.setdefault(key, set()).add(follower)
        if self._task is None or self._task.done():
            self._task = asyncio.create_task(self._poll(), name="audit-bell")

    def remove(self, follower: Follower) -> None:
        for key in follower.keys:
            followers = self._followers.get(key)
            if followers is not None:
                followers.discard(follower)
                if not followers:
                    del self._followers[key]
                    self._last.pop(key, None)

    async def _poll(self) -> None:
        while self._followers:
            try:
                await self._look()
            except Exception:  # Redis down or failing over: the followers' reads say so
                log.debug("audit_look_failed", exc_info=True)
                for followers in list(self._followers.values()):
                    for follower in followers:
                        follower.ring()
            await asyncio.sleep(FOLLOW_POLL_S)

    async def _look(self) -> None:
        keys = list(self._followers)
        async with self._redis.pipeline(transaction=False) as pipe:
            for key in keys:
                pipe.xrevrange(key, "+", "-", count=1)
            rows: list[list[tuple[str, Any]]] = await pipe.execute()
        for key, newest in zip(keys, rows, strict=True):
            if key not in self._followers:
                continue  # its last follower left during the read
            last = newest[0][0] if newest else ""
            if key in self._last and self._last[key] == last:
                continue
            self._last[key] = last
            for follower in self._followers.get(key, ()):
                follower.ring()


async def _merged(streams: list[AsyncIterator[_Ordered]]) -> AsyncIterator[dict[str, Any]]:
    """The entries of streams each in id order, in id order; on a tie, the earlier stream's."""
    heads: list[tuple[tuple[int, int], int, dict[str, Any]]] = []
    for index, stream in enumerate(streams):
        if (head := await anext(stream, None)) is not None:
            heapq.heappush(heads, (head[0], index, head[1]))
    while heads:
        _, index, entry = heapq.heappop(heads)
        yield entry
        if (head := await anext(streams[index], None)) is not None:
            heapq.heappush(heads, (head[0], index, head[1]))


def as_json(entry_id: str, values: Mapping[str, str]) -> dict[str, Any]:
    """An entry as the API and the export show it."""
    at_ms = int(entry_id.split("-", 1)[0])
    entry: dict[str, Any] = {"id": entry_id, "at": at_ms / 1000}
    entry.update({name: values.get(name, "") for name in FIELDS})
    entry["detail"] = orjson.loads(values.get("detail", "{}"))
    return entry
