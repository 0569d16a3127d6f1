"""Runs: a held request's continuation, driven by the one replica that holds its lease.

From its first approval notice on, a streamed request is a run. Its events get sequence
numbers (the SSE `id:`) and go, in batches, to the run's log in Redis, and only once logged
to the local listeners (the client's response, and any re-attached ones): an id a client
has seen names a logged event, so a replica that takes the run over numbers its events
after every id any client saw, and a client re-attaching anywhere gets exactly what it
missed. The run goes on when its client disconnects; it stops only when it ends, when this
replica drains, or when it loses its lease (another replica took over).
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import AsyncIterator

import structlog

from core.audit import AuditEntry
from core.connect import REDIS_ERRORS, stop_if_cancelled
from core.errors import GatewayError, RedisUnavailable
from core.inbox import Inbox
from core.records import SessionStatus
from core.runlog import Lease, RunLog
from gateway.chunks import ChunkMeta
from gateway.conversation import resume
from gateway.events import (
    ApprovalNotice,
    ContentDelta,
    Ended,
    Event,
    Finished,
    Heartbeat,
    Item,
    LoggedEvent,
    Reattach,
    Resumed,
    SessionOpened,
    StreamFailed,
    TextPieces,
    ToolEvent,
    to_json,
)
from gateway.replica import Replica
from gateway.sse import HeartbeatTimer, failures_as

log = structlog.stdlib.get_logger(__name__)

_FAILURE_NOT_RECORDED: tuple[type[Exception], ...] = (GatewayError, *REDIS_ERRORS)
_URGENT = (ApprovalNotice, ToolEvent, Finished, StreamFailed, Ended)
"""Events flushed to the log at once; content deltas wait for the batch window."""


Listener = Inbox[Item]
"""One listener's inbox: the numbered events, heartbeats and re-attach notices for it."""


class Run:
    """One run on this replica: drives its events, logs them, and feeds its listeners."""

    def __init__(self, registry: RunRegistry, lease: Lease, seq: int, meta: ChunkMeta) -> None:
        self.registry = registry
        self.lease = lease
        self.log_id = lease.log_id
        self.meta = meta
        self.seq = seq
        """The sequence number of the last event; the next one gets seq + 1."""
        self.delivered = seq
        """The sequence number of the last event logged, and so given to listeners."""
        self.first_seq = seq + 1
        self.session_id = lease.log_id
        """The session of the run's latest tool round (the first one's id names the run)."""
        self.history: list[tuple[int, LoggedEvent]] = []
        """The events logged so far (what a listener joining now is sent first)."""
        self.listeners: set[Listener] = set()
        self.logged_tool_events: set[tuple[str, str]] = set()
        """`(type, call id)` of the tool events an earlier owner logged: a taking-over run
        reports every call's progress again, and sends only what is not logged yet."""
        self._unflushed: list[tuple[int, LoggedEvent, bytes]] = []
        self._meta_fields: dict[str, str] = {**meta.as_fields(), "session": self.log_id}
        self._drive_task: asyncio.Task[None] | None = None
        self._flusher: asyncio.Task[None] | None = None
        """Exists only while events wait to be logged: an idle (held) run has no flush task."""
        self._urgent = False
        self._nap: asyncio.Future[None] | None = None
        """The flusher's batch window; an urgent event cuts it short."""
        self._stopping = False
        self.ended = False
        self._final: Reattach | None = None
        """Where a listener that joins after the run stopped is sent."""
        self._flush_lock = asyncio.Lock()
        """One append at a time, in order: a later batch logged first would make the log
        skip the earlier one (it skips sequence numbers it has passed)."""

    @property
    def stopping(self) -> bool:
        return self._stopping

    def start(self, source: AsyncIterator[Event], first: LoggedEvent) -> None:
        self._publish(first)  # its flush writes the meta fields too
        self._drive_task = asyncio.create_task(self._drive(source), name=f"run-{self.log_id}")

    async def listen(self, after: int) -> AsyncIterator[list[Item]]:
        """Events after `after` (from memory), then live ones as they come (all that came
        together in one list), with a heartbeat when idle; ends after the last event."""
        listener = Listener()
        backlog: list[Item] = [(seq, event) for seq, event in self.history if seq > after]
        if self._final is not None:  # it stopped before this listener came
            backlog.append(self._final)
        self.listeners.add(listener)
        try:
            beat = HeartbeatTimer(self.registry.replica.settings.heartbeat_interval_s)
            batch = backlog or await listener.take(beat.remaining())
            while True:
                if not batch and beat.due():
                    yield [Heartbeat()]
                for index, item in enumerate(batch):
                    if isinstance(item, Reattach) or (
                        isinstance(item, tuple) and isinstance(item[1], Ended)
                    ):
                        yield batch[: index + 1]
                        return
                if batch:
                    yield batch
                    beat.sent()
                batch = await listener.take(beat.remaining())
        finally:
            self.listeners.discard(listener)

    async def stop(self, *, hand_over: bool) -> None:
        """Stop driving; flush what is logged; give the lease back; tell listeners to re-attach."""
        tasks = [t for t in (self._drive_task, self._flusher) if t is not None]
        for task in tasks:
            if hand_over or task is not self._drive_task:
                task.cancel()
        self._stopping = True
        self._cut_nap()
        if not tasks:
            stuck: set[asyncio.Task[None]] = set()
        else:
            _, stuck = await asyncio.wait(tasks, timeout=self.registry.stop_timeout_s)
        for task in stuck:  # a cancellation lost inside a library; the loops' flag still ends them
            log.warning("run_task_stuck", run=self.log_id, task=task.get_name())
        try:
            await self._flush()
            await self.registry.runlog.release(self.lease)
            if self.ended and self.delivered == self.seq:
                await self.registry.runlog.untrack(self.log_id)
        except REDIS_ERRORS as error:
            log.warning("run_last_writes_lost", run=self.log_id, error=str(error))
            self.registry.replica.metrics.redis_failed()
        if (hand_over and not self.ended) or self.delivered < self.seq:
            # Events not logged were never sent: whoever continues the run sends its own.
            self._final = Reattach(f"/v1/approvals/{self.log_id}/stream", self.delivered)
            for listener in self.listeners:
                listener.put(self._final)
        self.registry.runs.pop(self.log_id, None)

    async def _drive(self, source: AsyncIterator[Event]) -> None:
        logging = failures_as(self._log(source), StreamFailed.of, "run_failed", run=self.log_id)
        async for failed in logging:  # only a failure comes out
            if failed.code == RedisUnavailable.code:
                # Redis failed, not the run: it goes on elsewhere or later (a re-attach, or
                # the sweeper once its lease lapses) from what its log holds; its
                # listeners are told where to re-attach.
                log.warning("run_handed_over", run=self.log_id, error=failed.message)
                asyncio.get_running_loop().create_task(self.stop(hand_over=True))
                return
            self._publish(failed)
            await self._record_failure(failed)
        self._meta_fields["done"] = "1"  # flushed with Ended: a finished run is never resumed
        self._publish(Ended())
        self.ended = True
        asyncio.get_running_loop().create_task(self.stop(hand_over=False))

    async def _log(self, source: AsyncIterator[Event]) -> AsyncIterator[StreamFailed]:
        """Log each event of `source` (listeners get them once logged). Yields nothing of
        its own: `failures_as` turns what ends it early into the run's `StreamFailed`."""
        async for event in source:
            if isinstance(event, TextPieces):
                for piece in event.pieces:
                    self._publish(ContentDelta(piece))
            elif isinstance(event, SessionOpened):
                # Logged before the loop goes on to claim it: a replica taking over
                # continues this round's session, not the one before.
                self._meta_fields["session"] = self.session_id = event.session_id
                await self._flush_until_logged()
            elif isinstance(event, Heartbeat):
                continue  # each listener sends its own when idle
            else:
                self._publish(event)
        return
        yield  # an async generator that yields nothing itself

    async def _record_failure(self, error: StreamFailed) -> None:
        """A failed run's session (if it was running) is failed, and the audit log says why."""
        replica = self.registry.replica
        try:
            await replica.store.finish(self.session_id, SessionStatus.FAILED)
            record = await replica.store.get(self.session_id, view_only=True)
            entry = AuditEntry(
                "run_failed",
                session=self.session_id,
                actor=f"replica:{replica.runner_id}",
                tenant=record.view.tenant,
                detail={"code": error.code, "message": error.message[:500]},
            )
            await replica.audit.append([entry])
        except _FAILURE_NOT_RECORDED as failure:
            log.warning("run_failure_not_recorded", run=self.log_id, error=str(failure))

    def _publish(self, event: LoggedEvent) -> None:
        """Number the event and queue it for the log (listeners get it once it is logged)."""
        if (
            isinstance(event, ToolEvent)
            and (event.type, event.tool_call_id) in self.logged_tool_events
        ):
            return  # a taken-over run's progress its clients were sent already
        self.seq += 1
        self._unflushed.append((self.seq, event, to_json(event)))
        if isinstance(event, _URGENT) or len(self._unflushed) >= 64:
            self._urgent = True
            self._cut_nap()
        self._start_flusher()

    async def _flush_until_logged(self) -> None:
        """Flush now, and again (every 0.25 s) while Redis fails."""
        while True:
            try:
                await self._flush()
                return
            except REDIS_ERRORS as error:
                log.warning("run_log_append_failed", run=self.log_id, error=str(error))
                self.registry.replica.metrics.redis_failed()
                await asyncio.sleep(0.25)

    def _start_flusher(self) -> None:
        if self._flusher is None and not self._stopping:
            self._flusher = asyncio.get_running_loop().create_task(
                self._flush_while_dirty(), name=f"run-flush-{self.log_id}"
            )

    def _cut_nap(self) -> None:
        if self._nap is not None and not self._nap.done():
            self._nap.set_result(None)

    async def _flush_while_dirty(self) -> None:
        """Log what is unflushed, batching for the window unless something is urgent; end
        when nothing is left (the next event starts a new flusher)."""
        window = self.registry.flush_window_s
        try:
            while (self._unflushed or self._meta_fields) and not self._stopping:
                if not self._urgent:
                    self._nap = asyncio.get_running_loop().create_future()
                    with contextlib.suppress(TimeoutError):
                        async with asyncio.timeout(window):
                            await self._nap
                    self._nap = None
                self._urgent = False
                try:
                    await self._flush()
                except REDIS_ERRORS as error:
                    log.warning("run_log_append_failed", run=self.log_id, error=str(error))
                    self.registry.replica.metrics.redis_failed()
                    await asyncio.sleep(0.25)
        finally:
            self._flusher = None

    async def _flush(self) -> None:
        async with self._flush_lock:
            await self._flush_locked()

    async def _flush_locked(self) -> None:
        if not self._unflushed and not self._meta_fields:
            return
        batch, self._unflushed = self._unflushed, []
        meta, self._meta_fields = self._meta_fields, {}
        try:
            appended = await self.registry.runlog.append(
                self.lease, [(seq, raw) for seq, _, raw in batch], meta
            )
        except BaseException:
            # Perhaps logged after all (the reply was lost): the retry skips what is.
            self._unflushed = batch + self._unflushed
            self._meta_fields = {**meta, **self._meta_fields}
            raise
        self.registry.replica.metrics.run_log_writes.inc()
        if not appended:
            # Fenced out: another replica numbers its events after the last one logged,
            # which is the last one any listener was given.
            log.warning("run_lease_lost", run=self.log_id)  # another replica continues it
            self._unflushed = []
            if not self._stopping:
                asyncio.get_running_loop().create_task(self.stop(hand_over=True))
            return
        for seq, event, _ in batch:
            self.history.append((seq, event))
            for listener in self.listeners:
                listener.put((seq, event))
        if batch:
            self.delivered = batch[-1][0]


class RunRegistry:
    """The runs this replica drives, and starting, taking over and draining them."""

    def __init__(self, replica: Replica, runlog: RunLog) -> None:
        self.replica = replica
        self.runlog = runlog
        self.runs: dict[str, Run] = {}
        self.lease_ms = int(replica.settings.lease_s * 1000)
        self.flush_window_s = replica.settings.log_flush_ms / 1000
        self.stop_timeout_s = replica.settings.shutdown_grace_s / 2
        self.draining = False
        self._renewer: asyncio.Task[None] | None = None
        self._taking_over: set[str] = set()

    def _track(self, run: Run) -> None:
        self.runs[run.log_id] = run
        if self._renewer is None:
            self._renewer = asyncio.create_task(self._renew_forever(), name="run-leases")

    async def _renew_forever(self) -> None:
        """Renew every local run's lease three times per lease (`RunLog.renew_all`)."""
        while True:
            stop_if_cancelled()  # a cancellation a library swallowed still ends the loop
            await asyncio.sleep(self.lease_ms / 3000)
            runs = [run for run in self.runs.values() if not run.stopping]
            if not runs:
                continue
            try:
                held = await self.runlog.renew_all([run.lease for run in runs], self.lease_ms)
            except Exception as error:  # whatever it was, the next round tries again
                stop_if_cancelled()
                log.warning("lease_renewal_failed", runs=len(runs), error=str(error))
                continue
            for run, still_ours in zip(runs, held, strict=True):
                if not still_ours and not run.stopping:
                    log.warning("run_lease_lapsed", run=run.log_id)
                    asyncio.get_running_loop().create_task(run.stop(hand_over=True))

    async def start(
        self, notice: ApprovalNotice, source: AsyncIterator[Event], seq: int, meta: ChunkMeta
    ) -> Run:
        """Turn a streamed request into a run at its first approval notice (numbered seq + 1)."""
        first = {**meta.as_fields(), "session": notice.session.id, "seq": str(seq)}
        lease = await self.runlog.acquire(
            notice.session.id, self.replica.runner_id, self.lease_ms, first
        )
        if lease is None:  # a fresh id nobody else knows: only a bug gets here
            raise RuntimeError(f"run {notice.session.id} is leased already")
        run = Run(self, lease, seq, meta)
        self._track(run)
        try:
            run.start(source, notice)
        except BaseException:
            await run.stop(hand_over=False)  # gives the lease back: nothing renews it forever
            raise
        return run

    async def take_over(self, log_id: str) -> Run | None:
        """Continue a run whose replica stopped: None while another replica holds its lease
        (or this one drives it already). One attempt per run at a time on this replica:
        the lease is this replica's however many of its callers ask."""
        if log_id in self.runs or log_id in self._taking_over:
            return None
        self._taking_over.add(log_id)
        try:
            return await self._take_over(log_id)
        finally:
            self._taking_over.discard(log_id)

    async def _take_over(self, log_id: str) -> Run | None:
        lease = await self.runlog.acquire(log_id, self.replica.runner_id, self.lease_ms)
        if lease is None:
            return None
        fields = await self.runlog.meta(log_id)
        try:
            if fields.get("done"):  # it ended; its log holds everything
                await self.runlog.release(lease)
                await self.runlog.untrack(log_id)
                return None
            if "session" not in fields:  # its replica died before logging anything
                fields = {**fields, "session": log_id}
            meta = ChunkMeta.of_fields(fields) if "completion_id" in fields else None
            run = Run(self, lease, int(fields.get("seq", "0")), meta or ChunkMeta.new("", False))
            run.logged_tool_events = await self.runlog.logged_tool_events(log_id)
        except BaseException:
            with contextlib.suppress(*REDIS_ERRORS):
                await self.runlog.release(lease)
            raise
        self._track(run)
        self.replica.metrics.lease_takeovers.inc()
        source = resume(self.replica, fields["session"], hold=True, token=lease.token)
        log.info("run_taken_over", run=log_id, lease=lease.token)
        run.start(source, Resumed(self.replica.runner_id))
        return run

    async def adopt_orphans(self) -> int:
        """Take over the runs no replica drives and no client re-attached to (their replica
        died): each is driven to its end into its log, so a later re-attach, the approvals
        API and the webhooks see its outcome. How many were taken over here."""
        if self.draining:
            return 0
        adopted = 0
        for log_id in await self.runlog.due():
            try:
                run = await self.take_over(log_id)
            except Exception:  # one run that cannot be taken over stops no other
                log.exception("run_adoption_failed", run=log_id)
                continue
            if run is not None:
                log.info("run_adopted", run=log_id)  # it had no replica and no client
                adopted += 1
        return adopted

    async def drain(self) -> None:
        """Stop every run, handing each to whichever replica its client re-attaches to."""
        self.draining = True
        self.replica.hub.wake_all()  # followers of remote runs notice the drain at once
        started = time.monotonic()
        await asyncio.gather(*(run.stop(hand_over=True) for run in list(self.runs.values())))
        if self._renewer is not None:
            self._renewer.cancel()
        log.info("drained", duration_ms=round((time.monotonic() - started) * 1000, 3))
