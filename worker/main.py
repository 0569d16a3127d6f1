"""`gateway-worker` command: take jobs from the stream, run each call at most once, store, ack.

A job whose worker died (idle longer than `claim_idle_ms`) is reclaimed by another worker:
an idempotent tool runs again (bounded attempts, then dead-lettered); any other tool's
outcome is settled as unknown and never run twice. Each worker serves `/healthz` and
`/metrics` on its own port (worker/health.py).
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import socket
import time

import structlog
from opentelemetry import trace
from opentelemetry.semconv._incubating.attributes import gen_ai_attributes as gen_ai

from core import logs, tracing
from core.arguments import ArgumentError
from core.audit import AuditEntry, AuditLog
from core.connect import REDIS_ERRORS, RedisClient, connect
from core.jobs import Job, JobQueue
from core.keys import Keys
from core.records import ToolResult, arguments_sha256
from core.settings import PolicyMode, Settings, WorkerSettings
from core.store import RunnableCall, SessionStore
from core.tools import ToolBox
from worker.execute import run_tool
from worker.health import health_port
from worker.metrics import WorkerMetrics

log = structlog.stdlib.get_logger(__name__)


class Worker:
    """One consumer of the job group, running up to `concurrency` calls at once."""

    def __init__(self, settings: Settings, redis: RedisClient, toolbox: ToolBox) -> None:
        keys = Keys.of(settings.key_prefix, cluster=settings.redis_cluster)
        self.settings = settings.worker
        self.name = consumer_name(settings.worker)
        self.store = SessionStore(redis, keys, settings.session_retention_s)
        self.jobs = JobQueue(redis, keys)
        self.audit = AuditLog(redis, keys, settings.audit_maxlen, settings.audit_retention_s)
        self.toolbox = toolbox
        self.stopping = asyncio.Event()
        self.in_flight: dict[asyncio.Task[None], Job] = {}
        self.metrics = WorkerMetrics(toolbox.tools)
        self.metrics.count_in_flight(lambda: len(self.in_flight))
        self.consuming = False
        self.redis_answered_at = -float("inf")
        """`time.monotonic()` of Redis's latest answer to the loop or the upkeep."""
        # The longest a healthy worker goes without an answer: a blocking read or an upkeep
        # interval (at full concurrency the loop does not read), plus the call's own bound.
        self.redis_quiet_limit_s = (
            max(self.settings.block_ms / 1000, self._upkeep_interval_s) + settings.redis_timeout_s
        )

    @property
    def _upkeep_interval_s(self) -> float:
        return self.settings.claim_idle_ms / 3000

    def health_problem(self) -> str | None:
        """Why this worker is not healthy, or None: it must be consuming, and Redis must
        have answered within `redis_quiet_limit_s`."""
        if not self.consuming:
            return "stopping" if self.stopping.is_set() else "not consuming yet"
        quiet_s = time.monotonic() - self.redis_answered_at
        if quiet_s > self.redis_quiet_limit_s:
            return f"Redis has not answered for {quiet_s:.1f} s"
        return None

    def _redis_answered(self) -> None:
        self.redis_answered_at = time.monotonic()

    async def run(self) -> None:
        """Consume until `stop()`, then let in-flight calls finish within the grace period."""
        await self.jobs.ensure_group()
        self._redis_answered()
        log.info("worker_consuming")
        upkeep = asyncio.create_task(self._upkeep_forever(), name="worker-upkeep")
        self._consuming(True)
        try:
            while not self.stopping.is_set():
                self.metrics.last_loop.set_to_current_time()
                free = self.settings.concurrency - len(self.in_flight)
                if free == 0:
                    await asyncio.wait(self.in_flight, return_when=asyncio.FIRST_COMPLETED)
                    continue
                try:
                    jobs = await self.jobs.read(self.name, free, self.settings.block_ms)
                except REDIS_ERRORS as error:
                    self.metrics.redis_errors.inc()
                    log.warning("job_read_failed", error=str(error))
                    await asyncio.sleep(0.5)
                    continue
                self._redis_answered()
                self._spawn(jobs, reclaimed=False)
        finally:
            self._consuming(False)
            # Upkeep keeps in-flight jobs claimed while they finish (it reclaims nothing now).
            try:
                await self._drain()
            finally:
                upkeep.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await upkeep

    def stop(self) -> None:
        """Stop taking new jobs (idempotent)."""
        self.stopping.set()

    def _consuming(self, consuming: bool) -> None:
        self.consuming = consuming
        self.metrics.up.set(1 if consuming else 0)

    def _spawn(self, jobs: list[Job], *, reclaimed: bool) -> None:
        for job in jobs:
            task = asyncio.create_task(self._handle_traced(job, reclaimed=reclaimed))
            self.in_flight[task] = job
            task.add_done_callback(self._forget)

    def _forget(self, task: asyncio.Task[None]) -> None:
        """Drop a finished job; a job that raised stays unacknowledged (it is reclaimed)."""
        job = self.in_flight.pop(task, None)
        error = None if task.cancelled() else task.exception()
        if error is None:
            return
        if isinstance(error, REDIS_ERRORS):
            self.metrics.redis_errors.inc()
        entry_id = job.entry_id if job is not None else "?"
        log.error("job_failed", job=entry_id, exc_info=error)

    async def _handle_traced(self, job: Job, *, reclaimed: bool) -> None:
        """`handle` in a span of the request's trace (the job carries its context)."""
        name = f"execute_tool {job.tool[:64]}"
        parent = tracing.context_of(job.trace)
        with tracing.tracer.start_as_current_span(name, context=parent) as span:
            span.set_attribute(gen_ai.GEN_AI_OPERATION_NAME, "execute_tool")
            span.set_attribute(gen_ai.GEN_AI_TOOL_NAME, job.tool[:128])
            span.set_attribute(gen_ai.GEN_AI_TOOL_CALL_ID, job.tool_call_id[:128])
            span.set_attribute("approval.session_id", job.session_id[:128])
            span.set_attribute("worker.name", self.name)
            span.set_attribute("worker.reclaimed", reclaimed)
            await self.handle(job, reclaimed=reclaimed)

    async def handle(self, job: Job, *, reclaimed: bool = False) -> None:
        """Run a job's call if it may run; store the outcome, then acknowledge."""
        # On every log line about this job (the task's own context: no other job sees it).
        structlog.contextvars.bind_contextvars(
            session_id=job.session_id, call=job.tool_call_id, tool=job.tool[:128]
        )
        idempotent = self.toolbox.idempotent(job.tool)
        outcome, call = await self.store.start_call(
            job.session_id,
            job.tool_call_id,
            self.name,
            reclaimed=reclaimed,
            idempotent=idempotent,
            max_attempts=self.settings.max_attempts,
            job_id=job.entry_id,
        )
        if outcome == "exhausted":
            await self.jobs.dead_letter(job, f"{self.settings.max_attempts} attempts")
        event = "executed"
        detail: dict[str, object] = {"outcome": outcome, "attempt": "reclaimed"}
        if call is None:
            log.info("job_settled_without_running", job=job.entry_id, outcome=outcome)
            self.metrics.settled_without_running(job.tool, outcome)
        else:
            structlog.contextvars.bind_contextvars(tenant=call.tenant)
            refusal = self._refusal(job, call)
            if refusal is None:
                result = await self._execute(call)
                self.metrics.ran(call.name, result.status, result.duration_ms / 1000)
                event, detail = (
                    "executed",
                    {
                        "outcome": result.status,
                        "duration_ms": result.duration_ms,
                        "arguments_sha256": call.approved_sha256,
                        "attempt": "reclaimed" if reclaimed else "first",
                    },
                )
            else:
                # Past ": " a schema error may quote the arguments: the result and audit keep it.
                log.warning("job_refused", job=job.entry_id, reason=refusal.partition(": ")[0])
                self.metrics.refused(call.name)
                result = ToolResult(
                    status="failed", content=f"refused by the worker: {refusal}", worker=self.name
                )
                event, detail = "run_refused", {"reason": refusal, "job_tool": job.tool[:128]}
            await self.store.finish_call(job.session_id, job.tool_call_id, result)
        if call is not None or outcome in ("unknown", "exhausted"):
            entry = AuditEntry(
                event,
                session=job.session_id,
                tool=call.name if call is not None else job.tool,
                call=job.tool_call_id,
                actor=f"worker:{self.name}",
                tenant=call.tenant if call is not None else "",
                detail=detail,
            )
            try:
                await self.audit.append([entry])
            except REDIS_ERRORS:  # the outcome is stored; audit is best effort
                self.metrics.redis_errors.inc()
        span = trace.get_current_span()
        span.set_attribute("worker.event", event)
        span.set_attribute("worker.outcome", str(detail.get("outcome", "refused")))
        await self.jobs.ack(job)

    def _refusal(self, job: Job, call: RunnableCall) -> str | None:
        """Why this call must not run, or None: the job, the session's call under that id
        and its decision must agree exactly, and policy here must not deny it."""
        name, arguments = call.name, call.arguments
        if name != job.tool:
            return f"the job names {job.tool[:128]!r} but the session's call is {name!r}"
        if not call.approved_sha256:
            return "no approval covers this call"
        if name not in self.toolbox:
            return f"this worker has no tool named {name!r}"
        try:
            self.toolbox.check_arguments(name, arguments)
        except ArgumentError as error:
            return f"invalid arguments: {error}"
        if arguments_sha256(arguments) != call.approved_sha256:
            return "the arguments are not the ones that were approved"
        mode = self.toolbox.mode_for(name, arguments)
        if mode is PolicyMode.DENY:
            return "policy denies this call"
        assert call.decision is not None  # approved_sha256 is "" without one
        if mode is PolicyMode.ASK and call.decision.actor == "policy":
            return "policy says a person must decide this call, and none did"
        return None

    async def _execute(self, call: RunnableCall) -> ToolResult:
        name = call.name
        timeout_s = self.toolbox.timeout_s(name, self.settings.tool_timeout_s)
        tool = self.toolbox.tools[name]
        log.debug("tool_call_arguments", arguments=call.arguments)  # core.logs.Redactor
        result = await run_tool(
            tool, call.arguments, timeout_s, self.settings.max_result_bytes, self.name
        )
        log.info("tool_run_finished", status=result.status, duration_ms=result.duration_ms)
        return result

    async def _upkeep_forever(self) -> None:
        """Keep in-flight jobs claimed, and reclaim dead workers' jobs."""
        while True:
            await asyncio.sleep(self._upkeep_interval_s)
            try:
                await self.jobs.keep_alive(self.name, self.in_flight.values())
                free = self.settings.concurrency - len(self.in_flight)
                if free > 0 and not self.stopping.is_set():
                    claimed = await self.jobs.reclaim(self.name, self.settings.claim_idle_ms, free)
                    if claimed:
                        log.warning("jobs_reclaimed", jobs=len(claimed))  # of stopped workers
                        self.metrics.jobs_reclaimed.inc(len(claimed))
                    self._spawn(claimed, reclaimed=True)
                self._redis_answered()  # unless stopping, keep_alive or reclaim asked it
            except REDIS_ERRORS as error:
                self.metrics.redis_errors.inc()
                log.warning("job_upkeep_failed", error=str(error))

    async def _drain(self) -> None:
        # Unfinished jobs stay unacknowledged: another worker reclaims them after claim_idle_ms.
        if self.in_flight:
            grace = self.settings.shutdown_grace_s
            _done, pending = await asyncio.wait(list(self.in_flight), timeout=grace)
            for task in pending:
                task.cancel()
            await asyncio.gather(*pending, return_exceptions=True)
        log.info("worker_stopped")


async def serve(settings: Settings) -> None:
    """Run a worker until SIGTERM or SIGINT."""
    name = f"worker:{socket.gethostname()}:{os.getpid()}"
    redis = connect(settings, name, extra_read_s=settings.worker.block_ms / 1000)
    worker = Worker(settings, redis, ToolBox.from_settings(settings))
    tracing.configure("approval-gateway-worker", worker.name)
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, worker.stop)
    try:
        async with health_port(worker, settings.worker.metrics_host, settings.worker.metrics_port):
            await worker.run()
    finally:
        with contextlib.suppress(*REDIS_ERRORS):
            await redis.aclose()
        tracing.shutdown()


def main() -> None:
    """Entry point of `gateway-worker`."""
    settings = Settings()
    logs.configure(
        "worker",
        replica=consumer_name(settings.worker),
        fmt=settings.log_format,
        level=settings.log_level,
        log_arguments=settings.log_arguments,
    )
    asyncio.run(serve(settings))


def consumer_name(settings: WorkerSettings) -> str:
    """This worker's name in the consumer group (and its logs' `replica`): the configured
    one, else hostname-pid."""
    return settings.name or f"{socket.gethostname()}-{os.getpid()}"


if __name__ == "__main__":
    main()
