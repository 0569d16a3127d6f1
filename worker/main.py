"""`gateway-worker` command: take jobs from the stream, run them once, store, acknowledge."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import signal
import socket

from redis.asyncio import Redis
from redis.exceptions import RedisError

from core.jobs import Job, JobQueue
from core.keys import Keys
from core.records import ToolResult, arguments_sha256
from core.settings import Settings
from core.store import SessionStore
from core.tools import ToolBox, load_tools
from worker.execute import run_tool

log = logging.getLogger(__name__)


class Worker:
    """One consumer of the job group, running up to `concurrency` calls at once."""

    def __init__(self, settings: Settings, redis: Redis, toolbox: ToolBox) -> None:
        keys = Keys(settings.key_prefix)
        self.settings = settings.worker
        self.name = settings.worker.name or f"{socket.gethostname()}-{os.getpid()}"
        self.store = SessionStore(redis, keys, settings.session_retention_s)
        self.jobs = JobQueue(redis, keys)
        self.toolbox = toolbox
        self.stopping = asyncio.Event()
        self.in_flight: set[asyncio.Task[None]] = set()

    async def run(self) -> None:
        """Consume until `stop()`, then let in-flight calls finish within the grace period."""
        await self.jobs.ensure_group()
        log.info("worker %s consuming", self.name)
        while not self.stopping.is_set():
            free = self.settings.concurrency - len(self.in_flight)
            if free == 0:
                await asyncio.wait(self.in_flight, return_when=asyncio.FIRST_COMPLETED)
                continue
            try:
                jobs = await self.jobs.read(self.name, free, self.settings.block_ms)
            except RedisError as error:
                log.warning("reading jobs failed: %s", error)
                await asyncio.sleep(0.5)
                continue
            for job in jobs:
                task = asyncio.create_task(self.handle(job))
                self.in_flight.add(task)
                task.add_done_callback(self.in_flight.discard)
        await self._drain()

    def stop(self) -> None:
        """Stop taking new jobs (idempotent)."""
        self.stopping.set()

    async def handle(self, job: Job) -> None:
        """Run a job's call if it is still queued; store the outcome, then acknowledge."""
        call = await self.store.start_call(job.session_id, job.tool_call_id, self.name)
        if call is None:
            await self.jobs.ack(job)
            return
        result = await self._execute(call)
        await self.store.finish_call(job.session_id, job.tool_call_id, result)
        await self.jobs.ack(job)

    async def _execute(self, call: dict[str, object]) -> ToolResult:
        name, arguments = str(call["name"]), call["arguments"]
        if (
            not isinstance(arguments, dict)
            or arguments_sha256(arguments) != call["arguments_sha256"]
        ):
            return ToolResult(status="failed", content="arguments do not match the approved hash")
        if name not in self.toolbox:
            return ToolResult(status="failed", content=f"this worker has no tool named {name!r}")
        timeout_s = float(
            self.toolbox.metadata(name).get("timeout_s", self.settings.tool_timeout_s)
        )
        return await run_tool(
            self.toolbox.tools[name],
            arguments,
            timeout_s,
            self.settings.max_result_bytes,
            self.name,
        )

    async def _drain(self) -> None:
        if self.in_flight:
            _done, pending = await asyncio.wait(
                self.in_flight, timeout=self.settings.shutdown_grace_s
            )
            for task in pending:
                task.cancel()
        log.info("worker %s stopped", self.name)


async def serve(settings: Settings) -> None:
    """Run a worker until SIGTERM or SIGINT."""
    redis = Redis.from_url(
        settings.redis_url,
        decode_responses=True,
        socket_timeout=settings.redis_timeout_s + settings.worker.block_ms / 1000,
        socket_connect_timeout=settings.redis_timeout_s,
    )
    worker = Worker(settings, redis, ToolBox(load_tools(settings.tools), settings.tool_policy))
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, worker.stop)
    try:
        await worker.run()
    finally:
        with contextlib.suppress(RedisError):
            await redis.aclose()


def main() -> None:
    """Entry point of `gateway-worker`."""
    logging.basicConfig(
        level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s"
    )
    asyncio.run(serve(Settings()))


if __name__ == "__main__":
    main()
