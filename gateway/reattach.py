"""`GET /v1/approvals/{id}/stream`: re-attach to a held request's stream on any replica.

Sends the run's events after `Last-Event-ID` (header, or `?last_event_id=`), then follows
it live. When no replica holds the run's lease any more (its replica died or drained),
this replica takes the run over and continues it. Every such stream ends with `[DONE]`:
after the run's last event, after a failure (an error event first), or at once when the
client already has every event.
"""

from __future__ import annotations

import time
from collections.abc import AsyncIterator

import structlog
from starlette.requests import Request
from starlette.responses import Response

from core.errors import (
    ErrorBody,
    Forbidden,
    InvalidRequest,
    NoStream,
    Overloaded,
    RedisUnavailable,
    SessionNotFound,
    Unavailable,
)
from core.runlog import RunLog
from gateway import sse, traces
from gateway.auth import principal_of
from gateway.chunks import ChunkMeta, ChunkWriter, StreamChunk
from gateway.events import Ended, LoggedEvent, Reattach, StreamFailed, from_json
from gateway.openapi import EventStream, Operation, Param, Reply
from gateway.replica import Replica
from gateway.requests import parse_int
from gateway.runs import RunRegistry

log = structlog.stdlib.get_logger(__name__)

PAGE = 1000
"""Logged events read per call while replaying."""


async def reattach(request: Request) -> Response:
    principal = principal_of(request)
    principal.require("requester", "approver")
    replica: Replica = request.app.state.replica
    runs: RunRegistry = request.app.state.runs
    if runs.draining:
        raise Unavailable("this replica is shutting down; retry on another")
    session_id = request.path_params["session_id"]
    structlog.contextvars.bind_contextvars(session_id=session_id)
    record = await replica.store.get(session_id)
    principal.require_sees(record.view)
    if principal.name != record.view.requester and not principal.has("approver"):
        # A requester follows its own streams only: another key's holds its conversation.
        raise SessionNotFound(f"no approval session {record.id!r}")
    if not record.log_id:
        raise NoStream(f"approval session {record.id!r} belongs to no stream to re-attach to")
    after = _last_event_id(request)
    traces.run_event("run resume", record, after=after, replica=replica.runner_id)
    return await follow_run(request, record.log_id, after, record.view.model)


async def follow_run(request: Request, log_id: str, after: int, model: str) -> Response:
    """A stream of run `log_id`'s events after `after`, live until it ends, on this replica."""
    replica: Replica = request.app.state.replica
    runs: RunRegistry = request.app.state.runs
    fields = await runs.runlog.meta(log_id)
    meta = ChunkMeta.of_fields(fields) if fields else ChunkMeta.new(model, False)
    slots: sse.StreamSlots = request.app.state.stream_slots
    return slots.response(_follow(replica, runs, log_id, after, meta))


def _last_event_id(request: Request) -> int:
    # Within int64: the run log's stream ids (seq-1) take nothing larger.
    raw = request.headers.get("last-event-id") or request.query_params.get("last_event_id", "0")
    return parse_int(raw, "Last-Event-ID", 0, 2**63 - 1)


async def _follow(
    replica: Replica, runs: RunRegistry, log_id: str, after: int, meta: ChunkMeta
) -> AsyncIterator[bytes]:
    """The run's events after `after`, ending with `[DONE]` however the stream ends."""
    chunks = ChunkWriter(meta)
    try:
        async for part in _replay_and_follow(replica, runs, log_id, after, chunks):
            yield part
    except sse.STREAM_ERRORS as raised:
        error = sse.as_gateway_error(raised)
        log.warning("reattach_failed", run=log_id, code=error.code, error=error.message)
        # No `id:`: the client's last event id stays that of the last event it really got.
        yield sse.data(StreamFailed.of(error).body()) + sse.DONE


async def _replay_and_follow(
    replica: Replica, runs: RunRegistry, log_id: str, after: int, chunks: ChunkWriter
) -> AsyncIterator[bytes]:
    cursor = after
    settings = replica.settings
    async with replica.hub.watch(log_id) as waiter:
        next_beat = time.monotonic() + settings.heartbeat_interval_s
        while True:
            run = runs.runs.get(log_id)
            # The local run has the events from its first on in memory.
            before = run.first_seq if run is not None else None
            async for seq, event in _logged(runs.runlog, log_id, cursor, before):
                cursor = seq
                yield chunks.render(seq, event)
                if isinstance(event, Ended):
                    return
            if run is not None:
                async for items in run.listen(cursor):
                    yield chunks.items(items)
                return
            if runs.draining:
                yield chunks.reattach(Reattach(f"/v1/approvals/{log_id}/stream", cursor))
                return
            if not await runs.runlog.is_leased(log_id):
                if (await runs.runlog.meta(log_id)).get("done"):
                    # The run ended and the client has every event up to its end.
                    yield sse.DONE
                    return
                if await runs.take_over(log_id):
                    continue
            await waiter.wait(min(settings.reread_interval_s, next_beat - time.monotonic()))
            if time.monotonic() >= next_beat:
                next_beat = time.monotonic() + settings.heartbeat_interval_s
                yield sse.HEARTBEAT


async def _logged(
    runlog: RunLog, log_id: str, after: int, before: int | None
) -> AsyncIterator[tuple[int, LoggedEvent]]:
    """Every logged event of the run after `after` (and before `before`), a page at a time."""
    while True:
        entries = await runlog.read_after(log_id, after, count=PAGE)
        for seq, raw in entries:
            if before is not None and seq >= before:
                return
            yield seq, from_json(raw)
            after = seq
        if len(entries) < PAGE:
            return


CHUNKS = EventStream((StreamChunk, ErrorBody))
"""A chat stream's events: chunks, an error after the stream started, then `[DONE]`."""
OPERATIONS = (
    Operation(
        "GET",
        "/v1/approvals/{session_id}/stream",
        "Re-attach to a held request's stream, on any replica",
        {
            200: Reply(
                "The run's chunks after the given event id (same completion id and `id:` "
                "numbers as the original stream), then the live ones until `[DONE]`; "
                "`: heartbeat` comments while nothing happens",
                stream=CHUNKS,
            )
        },
        description="Needs the role `requester` (its own streams) or `approver`, in the "
        "session's tenant. When no replica holds the run any more, this one takes it over.",
        params=(
            Param("session_id", "Any approval session the run opened", "path"),
            Param(
                "last_event_id",
                "The last event id received (the header wins)",
                schema={"type": "integer", "minimum": 0, "maximum": 2**63 - 1},
            ),
            Param("Last-Event-ID", "The last event id received", "header"),
        ),
        errors=(
            InvalidRequest,
            Forbidden,
            SessionNotFound,
            NoStream,
            Unavailable,
            Overloaded,
            RedisUnavailable,
        ),
    ),
)
