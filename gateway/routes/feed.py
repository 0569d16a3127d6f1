"""`GET /v1/approvals/events`: the live approvals feed, served by every replica.

An SSE stream of the audit log's approval events as they happen: by default `requested`,
`decided`, `expired` and `executed` (`?events=` picks others of the audit log's events).
Each event is one audit entry: `id:` is its entry id, `event:` its kind, `data:` the entry
as `GET /v1/audit` shows it. An approver follows its own tenant's stream; an admin every
tenant's, merged in time order, or one with `?tenant=`. Requesters get 403.

The stream opens with a `ready` event whose id is where it starts (now, or the client's
`Last-Event-ID`): a page that reads the pending list after `ready` misses nothing that
happens after it. Resuming with `Last-Event-ID` on any replica sends every entry after
that id (entries are read only up to Redis's settled millisecond, so no entry can later
appear before one already sent). Heartbeat comments keep it open while quiet; it never
ends on its own, except that a replica shutting down ends it (the client re-attaches
elsewhere with its last id).
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Mapping
from typing import Any

import orjson
import structlog
from pydantic import BaseModel
from starlette.requests import Request
from starlette.responses import Response

from core.audit import AuditLog
from core.errors import (
    ErrorBody,
    Forbidden,
    GatewayError,
    InvalidRequest,
    Overloaded,
    RedisUnavailable,
    Unavailable,
)
from gateway import sse
from gateway.auth import Principal
from gateway.openapi import EventStream, Operation, Param, Reply
from gateway.replica import Replica
from gateway.routes.audit import AuditEntryView, entry_id
from gateway.routes.guard import replica_of, runs_of, slots_of
from gateway.runs import RunRegistry

log = structlog.stdlib.get_logger(__name__)

DEFAULT_EVENTS = frozenset({"requested", "decided", "expired", "executed"})
AUDIT_EVENTS = frozenset(
    {
        *DEFAULT_EVENTS,
        "auto_approved",
        "denied",
        "granted_run",
        "granted",
        "refused",
        "run_refused",
        "run_failed",
        "history_refused",
        "client_result",
    }
)
BATCH = 500
"""Entries read per round trip while catching up."""
_LAST_SEQUENCE = 2**63 - 1
SETTLE_S = 0.005
TENANTS_REREAD_S = 1.0
"""How soon an admin's feed of every tenant follows a tenant's first entry."""


class FeedReady(BaseModel):
    """The feed's first event: where it starts."""

    id: str
    """The audit entry id the feed follows from (also the event's `id:`)."""
    tenant: str | None
    """The tenant followed; null for an admin's feed of every tenant."""


async def approval_events(request: Request, caller: Principal) -> Response:
    """Guarded: `approver`; refused while draining."""
    replica, runs = replica_of(request), runs_of(request)
    params = request.query_params
    wanted = _events(params.get("events"))
    admin = "admin" in caller.roles
    tenant = (params.get("tenant") or None) if admin else caller.tenant
    raw_last = request.headers.get("last-event-id") or params.get("last_event_id")
    start = entry_id(raw_last, "Last-Event-ID") if raw_last else None
    now = f"{await replica.audit.settled_ms()}-{_LAST_SEQUENCE}"
    if start is None or _ordered(start) > _ordered(now):
        start = now  # an id from the future would leave the feed silent forever
    return slots_of(request).response(_feed(replica, runs, tenant, start, wanted))


def _events(raw: str | None) -> frozenset[str]:
    if not raw:
        return DEFAULT_EVENTS
    names = frozenset(name.strip() for name in raw.split(",") if name.strip())
    if unknown := sorted(names - AUDIT_EVENTS):
        raise InvalidRequest(
            f"events: unknown {', '.join(map(repr, unknown[:5]))}; "
            f"known: {', '.join(sorted(AUDIT_EVENTS))}",
            param="events",
        )
    return names


async def _feed(
    replica: Replica, runs: RunRegistry, tenant: str | None, cursor: str, wanted: frozenset[str]
) -> AsyncIterator[bytes]:
    yield _event(cursor, "ready", FeedReady(id=cursor, tenant=tenant).model_dump())
    entries = _entries(replica, runs, tenant, cursor, wanted)
    async for part in sse.failures_as(entries, _error_event, "approvals_feed_failed"):
        yield part


def _error_event(error: GatewayError) -> bytes:
    return _event(None, "error", error.body())


async def _entries(
    replica: Replica, runs: RunRegistry, tenant: str | None, cursor: str, wanted: frozenset[str]
) -> AsyncIterator[bytes]:
    """Each wanted audit entry after `cursor` as its event, live, heartbeats while quiet."""
    audit, settings = replica.audit, replica.settings
    async with audit.follow(await _streams(audit, tenant)) as follower:
        beat = sse.HeartbeatTimer(settings.heartbeat_interval_s)
        recheck = False
        while not runs.draining:
            quiet = beat.remaining()
            if tenant is None:
                quiet = min(quiet, TENANTS_REREAD_S)
            # After a ring, read once more when Redis's current millisecond has passed:
            # the first read left entries of that millisecond for later.
            rung = await follower.wait(SETTLE_S if recheck else quiet)
            grown, recheck = rung or recheck, rung
            if tenant is None:  # an admin's feed follows tenants that appear
                follower.update(await _streams(audit, None))
            while grown and (entries := await audit.read_settled(tenant, cursor, BATCH)):
                cursor = entries[-1]["id"]
                for index, entry in enumerate(entries):
                    if entry["event"] in wanted:
                        # Entries of two tenants can share an id: only the last of them
                        # carries it, so a client cut off between them resumes before
                        # both (and may see the first again) rather than after both.
                        tied = index + 1 < len(entries) and entries[index + 1]["id"] == entry["id"]
                        yield _event(None if tied else entry["id"], entry["event"], entry)
                        beat.sent()
                grown = len(entries) >= BATCH  # more than BATCH: the last id was tied
            if beat.due():
                yield sse.HEARTBEAT


def _ordered(entry_id: str) -> tuple[int, int]:
    millis, sequence = entry_id.split("-", 1)
    return int(millis), int(sequence)


async def _streams(audit: AuditLog, tenant: str | None) -> list[str]:
    return audit.stream_keys([tenant] if tenant is not None else await audit.tenants())


def _event(event_id: str | None, kind: str, payload: Mapping[str, Any]) -> bytes:
    return (
        (b"" if event_id is None else b"id: " + event_id.encode() + b"\n")
        + b"event: "
        + kind.encode()
        + b"\ndata: "
        + orjson.dumps(payload)
        + b"\n\n"
    )


OPERATIONS = (
    Operation(
        "GET",
        "/v1/approvals/events",
        "The live approvals feed: audit events as they happen",
        {
            200: Reply(
                "Server-sent events: first `ready` (its `id:` is where the feed starts), then "
                "one event per audit entry (`event:` its kind, `data:` the entry, `id:` its "
                "id), `: heartbeat` comments while quiet, and `error` if the feed fails. It "
                "never ends on its own; resume on any replica with `Last-Event-ID`.",
                stream=EventStream((FeedReady, AuditEntryView, ErrorBody), done=False),
            )
        },
        description="Needs the role `approver`; an admin follows every tenant, or one with "
        "`tenant`.",
        params=(
            Param(
                "events",
                f"Comma-separated audit events (default: {', '.join(sorted(DEFAULT_EVENTS))})",
            ),
            Param("tenant", "An admin's choice of one tenant"),
            Param("last_event_id", "Resume after this audit entry id (`Last-Event-ID` wins)"),
            Param("Last-Event-ID", "Resume after this audit entry id", "header"),
        ),
        errors=(InvalidRequest, Forbidden, Unavailable, Overloaded, RedisUnavailable),
    ),
)
