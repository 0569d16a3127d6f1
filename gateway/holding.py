"""One tool round of a session: hold it for its decision, claim it, queue its approved
calls, and report their progress until each has its outcome.

One subscription serves the whole round, so the wake-up that ends the wait leads
straight to the claim, and the worker's result wake-ups to the result events.
"""

from __future__ import annotations

import contextlib
import secrets
import time
from collections.abc import AsyncIterator, Iterator
from typing import Any

import structlog

from core.connect import UNAVAILABLE_ERRORS, stop_if_cancelled
from core.errors import DecisionConflict
from core.grants import GrantScope
from core.records import CALL_DONE_STATUSES, CallStatus, SessionRecord, SessionStatus
from core.store import Claim
from core.wakeups import Waiter
from gateway import traces
from gateway.events import ApprovalNotice, Event, Heartbeat, ReleasedToClient
from gateway.handoff import client_call, released_calls
from gateway.outcomes import result_event, start_events, tool_message
from gateway.replica import Replica
from gateway.sse import HeartbeatTimer

log = structlog.stdlib.get_logger(__name__)

HEARTBEAT = Heartbeat()
_FINISHED = frozenset({SessionStatus.COMPLETED, SessionStatus.FAILED})


async def decide_then_run(
    replica: Replica, record: SessionRecord, conversation: list[dict[str, Any]], token: int = 0
) -> AsyncIterator[Event | ReleasedToClient]:
    """Wait for a pending session's decision, then run its tools: one subscription for both,
    so the wake-up that ends the wait leads straight to the claim. Fills `conversation`
    as `run_tools` does.

    The claim is made under a name of this continuation's own: a repeat of the same claim
    (a lost reply) gets the same answer, while any other continuation of the same
    decision (a retried request, here or on another replica) is refused.
    """
    claimant = f"{replica.runner_id}/{secrets.token_hex(6)}"
    async with replica.hub.watch(record.id) as waiter:
        claim = None
        if record.status is SessionStatus.PENDING:
            claim = await _await_decision(replica, record, waiter, claimant, token)
            if claim.status is SessionStatus.EXPIRED and claim.record is not None:
                traces.wait_ended(claim.record)  # a decision ends its wait where it is taken
                expired = claim.record.view.model_copy(update={"status": SessionStatus.EXPIRED})
                yield ApprovalNotice(expired)
            elif claim.record is not None:
                replica.metrics.resumed(claim.record.view)
        if claim is None:
            claim = await replica.store.begin_run(record.id, claimant, token)
        async for event in run_tools(replica, record.id, conversation, waiter, claim, token):
            yield event


async def _await_decision(
    replica: Replica, record: SessionRecord, waiter: Waiter, claimant: str, token: int
) -> Claim:
    """Hold until the session leaves `pending` (decided, or expired at its deadline), then
    claim it. Nothing is sent meanwhile: whoever relays the stream sends heartbeats
    (`gateway.runs`), so a held session costs one timer, its deadline. Each check after a
    wake-up *is* the claim (`BEGIN_RUN` refuses a pending session cheaply), so a decision
    is one round trip away from its first event."""
    session_id, expires_at = record.id, record.view.expires_at
    replica.poller.add(session_id, waiter)  # the safety net under pub/sub
    try:
        claim = await _try_claim(replica, session_id, claimant, token)
        while claim.status is SessionStatus.PENDING:
            left = expires_at - time.time()
            if left <= 0:
                with _redis_trouble_tolerated(replica):
                    await replica.store.expire_if_overdue(session_id)
                left = 0.05  # Redis's clock may lag ours by a little
            woken = await waiter.wait(left)
            if woken or time.time() >= expires_at:
                claim = await _try_claim(replica, session_id, claimant, token)
    finally:
        replica.poller.discard(session_id, waiter)
    return claim


async def run_tools(
    replica: Replica,
    session_id: str,
    conversation: list[dict[str, Any]],
    waiter: Waiter,
    claim: Claim,
    token: int = 0,
) -> AsyncIterator[Event | ReleasedToClient]:
    """Given the claim of a decided session, queue its approved calls and stream their
    progress.

    Fills `conversation` with what the model is asked next: the session's messages, then
    exactly one tool message per call. A taking-over runner (`token`) finds a finished
    session's messages without running anything again.
    """
    queued, record = claim.queued, claim.record
    if record is None:  # refused as pending: only a bug gets here
        raise DecisionConflict(f"approval session {session_id!r} is still pending")
    conversation.extend(record.continuation.messages)
    if queued is None:
        if not token or record.status not in _FINISHED:
            raise DecisionConflict(f"approval session {session_id!r} is {record.status.value}")
        for progress in start_events(record, taking_over=True):
            yield progress
        calls = record.view.tool_calls
        conversation.extend(tool_message(c) for c in calls if c.status is not CallStatus.RELEASED)
        async for handed in _hand_over(replica, record):
            yield handed
        return
    # The calls are queued in the session already. A runner taking over reports the progress
    # of every call again (its run sends only what its log does not hold yet).
    for started in start_events(record, taking_over=bool(token)):
        yield started
    await _mark_if_untrusted(replica, record, queued)
    names = {call.id: call.name for call in record.view.tool_calls}
    jobs = [(call_id, names[call_id]) for call_id in queued]
    await replica.jobs.enqueue(session_id, jobs, record.trace)
    timeout_s = replica.settings.tool_result_timeout_s
    async for update in _await_results(replica, waiter, record, timeout_s):
        if isinstance(update, SessionRecord):
            record = update
        else:
            yield update
    calls = record.view.tool_calls
    done = all(call.status in CALL_DONE_STATUSES for call in calls)
    conversation.extend(tool_message(c) for c in calls if c.status is not CallStatus.RELEASED)
    # A runner that takes over a finished session hands its released calls over again
    # (above), so dying between these two steps loses nothing.
    await replica.store.finish(
        session_id, SessionStatus.COMPLETED if done else SessionStatus.FAILED
    )
    async for handed in _hand_over(replica, record):
        yield handed


async def _hand_over(replica: Replica, record: SessionRecord) -> AsyncIterator[ReleasedToClient]:
    """The session's released client calls, for the client to run (recorded for its next
    request)."""
    released = released_calls(record)
    if released:
        await replica.handoffs.record(record.id, [call.id for call in released])
        yield ReleasedToClient([client_call(call, call.id) for call in released])


async def _mark_if_untrusted(replica: Replica, record: SessionRecord, queued: list[str]) -> None:
    """Untrusted output is about to enter the conversation: later requests in it see it."""
    view = record.view
    names = [call.name for call in view.tool_calls if call.id in queued]
    if any(replica.toolbox.untrusted_output(name) for name in names):
        await replica.taint.mark(GrantScope(view.tenant, view.requester, view.conversation))


async def _await_results(
    replica: Replica, waiter: Waiter, record: SessionRecord, timeout_s: float
) -> AsyncIterator[Event | SessionRecord]:
    """Yield result events as calls finish, heartbeats, and the last record read."""
    settings = replica.settings
    reported = {c.id for c in record.view.tool_calls if c.status in CALL_DONE_STATUSES}
    until = time.monotonic() + timeout_s
    beat = HeartbeatTimer(settings.heartbeat_interval_s)
    while len(reported) < len(record.view.tool_calls) and time.monotonic() < until:
        await waiter.wait(
            min(settings.reread_interval_s, beat.remaining(), until - time.monotonic())
        )
        if beat.due():
            yield HEARTBEAT
        record = await _reread(replica, record)
        for call in record.view.tool_calls:
            if call.id not in reported and call.status in CALL_DONE_STATUSES:
                reported.add(call.id)
                yield result_event(call)
    yield record


_STILL_PENDING = Claim(None, SessionStatus.PENDING, None)


async def _try_claim(replica: Replica, session_id: str, claimant: str, token: int) -> Claim:
    """Claim the session if it was decided; while Redis is unreachable, still pending (the
    claim is safe to repeat: the same claimant asking again gets the same answer)."""
    with _redis_trouble_tolerated(replica):
        return await replica.store.begin_run(session_id, claimant, token)
    return _STILL_PENDING


async def _reread(replica: Replica, last: SessionRecord) -> SessionRecord:
    """The session as Redis has it now; while Redis is unreachable, the last one read."""
    with _redis_trouble_tolerated(replica):
        return await replica.store.get(last.id)
    return last


@contextlib.contextmanager
def _redis_trouble_tolerated(replica: Replica) -> Iterator[None]:
    # A held stream outlives a Redis restart or freeze: its waits are bounded by its own
    # deadline, and the state it waits for is still in Redis (AOF) when Redis is back.
    try:
        yield
    except UNAVAILABLE_ERRORS as error:
        log.warning("redis_unavailable_while_holding", error=str(error))
        replica.metrics.redis_failed()
    stop_if_cancelled()  # a cancelled holder must still stop
