"""The tool-job stream: the gateway appends approved calls, workers consume them in a group."""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

from redis.asyncio import Redis
from redis.exceptions import ResponseError

from core.keys import Keys


@dataclass(frozen=True, slots=True)
class Job:
    """One call to run: a stream entry naming the session and the tool call."""

    entry_id: str
    session_id: str
    tool_call_id: str


class JobQueue:
    """Appends, reads and acknowledges tool jobs."""

    def __init__(self, redis: Redis, keys: Keys, maxlen: int = 100_000) -> None:
        self.redis = redis
        self.keys = keys
        self.maxlen = maxlen

    async def enqueue(self, session_id: str, call_ids: Iterable[str]) -> None:
        """Queue the calls of one session (one round trip)."""
        async with self.redis.pipeline(transaction=False) as pipe:
            for call_id in call_ids:
                pipe.xadd(
                    self.keys.jobs,
                    {"session_id": session_id, "tool_call_id": call_id},
                    maxlen=self.maxlen,
                    approximate=True,
                )
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
            Job(entry_id, fields["session_id"], fields["tool_call_id"])
            for _stream, entries in reply or []
            for entry_id, fields in entries
        ]

    async def ack(self, job: Job) -> None:
        """Acknowledge a job whose outcome is stored."""
        await self.redis.xack(self.keys.jobs, self.keys.jobs_group, job.entry_id)
