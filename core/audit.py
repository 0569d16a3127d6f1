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
"""

from __future__ import annotations

import heapq
import time
from collections.abc import AsyncIterator, Callable, Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

import orjson

from core.connect import RedisClient, RedisPipeline
from core.keys import Keys
from core.records import ApprovalSession, ToolCall
from core.settings import Settings

FIELDS = ("event", "session", "tool", "call", "actor", "tenant")
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

    def add_to(self, pipe: RedisPipeline, entries: Iterable[AuditEntry]) -> None:
        """Queue appends on a pipeline another write goes out on (one round trip for both)."""
        # XADD takes MAXLEN or MINID, not both. The age bound rides on every XADD, exact:
        # a quiet tenant's stream is small, and `~` keeps a whole node (up to 100 entries,
        # possibly months of them) past the retention. The size bound only stops a flood,
        # where a node of slack does not matter: one XTRIM MAXLEN ~ per stream per batch.
        # The age is by this process's clock; skew against Redis's shifts it by as much.
        oldest_ms = int(time.time() * 1000) - self.retention_ms
        tenants: dict[str, str] = {}  # stream key -> tenant
        for entry in entries:
            key = self.keys.audit_of(entry.tenant)
            tenants[key] = entry.tenant
            pipe.xadd(key, entry.fields(), minid=oldest_ms, approximate=False)  # type: ignore[arg-type]
        for key in tenants:
            pipe.xtrim(key, maxlen=self.maxlen, approximate=True)
            # A stream without an append for the whole retention holds only expired entries.
            pipe.pexpire(key, self.retention_ms)
        if tenants:
            pipe.sadd(self.keys.audit_tenants, *tenants.values())

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
