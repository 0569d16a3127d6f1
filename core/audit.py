"""The audit log: every approval event, appended to one Redis Stream with bounded retention.

An entry is flat: `event`, `session`, `tool`, `call`, `actor`, `tenant` (empty when they
do not apply) and `detail` (JSON). Events: `requested`, `auto_approved`, `denied`,
`granted_run` (a call covered by a grant ran without asking), `decided`, `granted`,
`refused` (a decision the gateway turned down, with why), `expired`, `executed`. The
stream id orders entries and gives their time.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

import orjson
from redis.asyncio import Redis
from redis.asyncio.client import Pipeline

from core.keys import Keys
from core.records import ApprovalSession, ToolCall

FIELDS = ("event", "session", "tool", "call", "actor", "tenant")


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
    """Appends to and reads the audit stream."""

    def __init__(self, redis: Redis, keys: Keys, maxlen: int) -> None:
        self.redis = redis
        self.key = keys.audit
        self.maxlen = maxlen

    def add_to(self, pipe: Pipeline, entries: Iterable[AuditEntry]) -> None:
        """Queue appends on a pipeline another write goes out on (one round trip for both)."""
        for entry in entries:
            pipe.xadd(self.key, entry.fields(), maxlen=self.maxlen, approximate=True)  # type: ignore[arg-type]

    async def append(self, entries: Iterable[AuditEntry]) -> None:
        batch = list(entries)
        if not batch:
            return
        async with self.redis.pipeline(transaction=False) as pipe:
            self.add_to(pipe, batch)
            await pipe.execute()

    async def entries(
        self,
        *,
        since_ms: int | None = None,
        until_ms: int | None = None,
        after: str | None = None,
        batch: int = 1000,
    ) -> AsyncIterator[dict[str, Any]]:
        """Entries in time order, from `since_ms` (or after the id `after`) to `until_ms`,
        read in batches of `batch`."""
        low = f"({after}" if after else (str(since_ms) if since_ms is not None else "-")
        high = str(until_ms) if until_ms is not None else "+"
        while True:
            rows: list[tuple[str, dict[str, str]]] = await self.redis.xrange(  # type: ignore[assignment]
                self.key, low, high, count=batch
            )
            for entry_id, values in rows:
                yield as_json(entry_id, values)
            if len(rows) < batch:
                return
            low = f"({rows[-1][0]}"


def as_json(entry_id: str, values: Mapping[str, str]) -> dict[str, Any]:
    """An entry as the API and the export show it."""
    at_ms = int(entry_id.split("-", 1)[0])
    entry: dict[str, Any] = {"id": entry_id, "at": at_ms / 1000}
    entry.update({name: values.get(name, "") for name in FIELDS})
    entry["detail"] = orjson.loads(values.get("detail", "{}"))
    return entry
