"""The tool-job stream: the gateway appends approved calls, workers consume them in a group."""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

from redis.exceptions import ResponseError

from core.connect import RedisClient
from core.keys import Keys


@dataclass(frozen=True, slots=True)
class Job:
    """One call to run: a stream entry naming the session and the tool call."""

    entry_id: str
    session_id: str
    tool_call_id: str
    tool: str
    """The tool's name, so a worker knows its traits without reading the session."""
    trace: str = ""
    """The `traceparent` the worker's span joins (core.tracing; "" while traces are off)."""


class JobQueue:
    """Appends, reads and acknowledges tool jobs."""

    def __init__(self, redis: RedisClient, keys: Keys, maxlen: int = 100_000) -> None:
        self.redis = redis
        self.keys = keys
        self.maxlen = maxlen

    async def enqueue(
        self, session_id: str, calls: Iterable[tuple[str, str]], trace: str = ""
    ) -> None:
        """Queue `(tool_call_id, tool)` calls of one session (one round trip)."""
        async with self.redis.pipeline(transaction=False) as pipe:
            for call_id, tool in calls:
                fields = {"session_id": session_id, "tool_call_id": call_id, "tool": tool}
                if trace:
                    fields["trace"] = trace
                pipe.xadd(self.keys.jobs, fields, maxlen=self.maxlen, approximate=True)  # type: ignore[arg-type]
            await pipe.execute()

    async def ensure_group(self) -> None:
        """Create the consumer group (and the stream) if missing."""
        try:
            await self.redis.xgroup_create(
                self.keys.jobs, self.keys.jobs_group, id="0", mkstream=True
            )
        except ResponseError as error:
            if "BUSYGROUP" not in str(error):
                raise

    async def read(self, consumer: str, count: int, block_ms: int) -> list[Job]:
        """New jobs for this consumer, waiting up to `block_ms`."""
        reply: list[tuple[str, list[tuple[str, dict[str, str]]]]] = await self.redis.xreadgroup(  # type: ignore[assignment]
            self.keys.jobs_group, consumer, {self.keys.jobs: ">"}, count=count, block=block_ms
        )
        return [
            _job(entry_id, fields)
            for _stream, entries in reply or []
            for entry_id, fields in entries
        ]

    async def reclaim(self, consumer: str, min_idle_ms: int, count: int) -> list[Job]:
        """Jobs of consumers that stopped acknowledging (dead workers), now this consumer's."""
        reply = await self.redis.xautoclaim(
            self.keys.jobs, self.keys.jobs_group, consumer, min_idle_ms, "0-0", count=count
        )
        entries: list[tuple[str, dict[str, str] | None]] = reply[1]
        # Entries trimmed from the stream come back without fields: nothing to run.
        return [_job(entry_id, fields) for entry_id, fields in entries if fields]

    async def keep_alive(self, consumer: str, jobs: Iterable[Job]) -> None:
        """Reset the idle time of jobs this consumer is still running, so none reclaims them."""
        ids: list[int | bytes | str | memoryview[int]] = [job.entry_id for job in jobs]
        if ids:
            await self.redis.xclaim(
                self.keys.jobs, self.keys.jobs_group, consumer, 0, ids, justid=True
            )

    async def dead_letter(self, job: Job, reason: str) -> None:
        """Record a job given up on."""
        fields: dict[bytes | bytearray | memoryview[int] | str | int | float, Any] = {
            "session_id": job.session_id,
            "tool_call_id": job.tool_call_id,
            "reason": reason,
        }
        await self.redis.xadd(self.keys.dead_jobs, fields, maxlen=self.maxlen, approximate=True)

    async def ack(self, job: Job) -> None:
        """Acknowledge a job whose outcome is stored."""
        await self.redis.xack(self.keys.jobs, self.keys.jobs_group, job.entry_id)


def _job(entry_id: str, fields: dict[str, str]) -> Job:
    return Job(
        entry_id,
        fields["session_id"],
        fields["tool_call_id"],
        fields.get("tool", ""),
        fields.get("trace", ""),
    )
