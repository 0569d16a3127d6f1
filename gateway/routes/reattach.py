"""`GET /v1/approvals/{id}/stream`: re-attach to a held request's stream on any replica.

Sends the run's events after `Last-Event-ID` (header, or `?last_event_id=`), then follows
it live. When no replica holds the run's lease any more (its replica died or drained),
this replica takes the run over and continues it. Every such stream ends with `[DONE]`:
after the run's last event, after a failure (an error event first), or at once when the
client already has every event.
"""

from __future__ import annotations

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
from gateway import traces
from gateway.auth import Principal
from gateway.chunks import StreamChunk
from gateway.follow import follow_run
from gateway.openapi import EventStream, Operation, Param, Reply
from gateway.requests import parse_int
from gateway.routes.guard import replica_of, runs_of, slots_of


async def reattach(request: Request, caller: Principal) -> Response:
    """Guarded: `requester` or `approver`; refused while draining."""
    replica = replica_of(request)
    session_id = request.path_params["session_id"]
    structlog.contextvars.bind_contextvars(session_id=session_id)
    record = await replica.store.get(session_id)
    caller.require_sees(record.view)
    if caller.name != record.view.requester and not caller.has("approver"):
        # A requester follows its own streams only: another key's holds its conversation.
        raise SessionNotFound(f"no approval session {record.id!r}")
    if not record.log_id:
        raise NoStream(f"approval session {record.id!r} belongs to no stream to re-attach to")
    after = _last_event_id(request)
    traces.run_event("run resume", record, after=after, replica=replica.runner_id)
    runs, model = runs_of(request), record.view.model
    return await follow_run(runs, slots_of(request), record.log_id, after, model)


def _last_event_id(request: Request) -> int:
    # Within int64: the run log's stream ids (seq-1) take nothing larger.
    raw = request.headers.get("last-event-id") or request.query_params.get("last_event_id", "0")
    return parse_int(raw, "Last-Event-ID", 0, 2**63 - 1)


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
