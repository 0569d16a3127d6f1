"""The approval loop: stream a model turn, hold risky calls for a decision, run tools, continue.

One loop serves every wire protocol: it yields `gateway.events` and the
protocol modules render them. A conversation that needs approval opens an
approval session in Redis; whoever continues it later (the holder of the
stream, or a replica serving the first version's approve call) needs nothing
but that session.
"""

from __future__ import annotations

import contextlib
import secrets
import time
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass
from typing import Any

import structlog

from core.connect import UNAVAILABLE_ERRORS, stop_if_cancelled
from core.errors import DecisionConflict, UpstreamError
from core.grants import GrantScope
from core.records import (
    CALL_DONE_STATUSES,
    CallStatus,
    SessionRecord,
    SessionStatus,
    ToolCallView,
)
from core.store import Claim
from core.wakeups import Waiter
from gateway import traces
from gateway.chat_context import ChatContext
from gateway.events import (
    ApprovalNotice,
    ClientToolCalls,
    Event,
    Finished,
    Heartbeat,
    ReleasedToClient,
    SessionOpened,
    TextPieces,
    ToolEvent,
)
from gateway.handoff import client_call, released_calls
from gateway.opening import classify_turn, open_session, provenance_of
from gateway.outcomes import tool_message
from gateway.replica import Replica
from gateway.upstream import TurnEnd

HEARTBEAT = Heartbeat()
log = structlog.stdlib.get_logger(__name__)


@dataclass(slots=True)
class _Usage:
    prompt_tokens: int = 0
    completion_tokens: int = 0

    def add(self, turn: TurnEnd) -> None:
        self.prompt_tokens += turn.prompt_tokens
        self.completion_tokens += turn.completion_tokens


async def converse(
    replica: Replica, ctx: ChatContext, messages: list[dict[str, Any]], rounds_used: int = 0
) -> AsyncIterator[Event]:
    """Run the model until it answers, holding and running server-side tool calls on the way."""
    usage = _Usage()
    answer: list[str] = []  # all the client's assistant message will say
    while True:
        offer_tools = rounds_used < replica.settings.max_tool_rounds
        tools = [*replica.toolbox.schemas, *ctx.client_tools] if offer_tools else []
        turn = TurnEnd()
        text: list[str] = []
        with (
            replica.metrics.upstream_turn() as timing,
            traces.upstream_turn(ctx.trace, ctx.model) as span,
        ):
            async for pieces in replica.upstream.stream_turn(
                ctx.model, messages, tools, ctx.params
            ):
                if isinstance(pieces, TurnEnd):
                    turn = pieces
                else:
                    if not text:
                        timing.first_output()
                    text += pieces
                    answer += pieces
                    yield TextPieces(pieces)
            traces.turn_ended(span, turn)
        usage.add(turn)
        if not turn.calls:
            await _remember_taint(replica, ctx, messages, "".join(answer), [])
            yield Finished(turn.finish_reason, usage.prompt_tokens, usage.completion_tokens)
            return
        if not offer_tools:
            # No tools were offered, so nothing may run: a model that calls them anyway
            # would otherwise go round forever.
            raise UpstreamError(
                f"the model kept calling tools after {replica.settings.max_tool_rounds} rounds "
                "(GATEWAY_MAX_TOOL_ROUNDS)"
            )
        classified = await classify_turn(replica, ctx, messages, turn.calls)
        if classified.passes_through:  # client calls policy lets through: as without us
            calls = [client_call(view, view.upstream_id) for view in classified.views]
            await _remember_taint(replica, ctx, messages, "".join(answer), [c["id"] for c in calls])
            yield ClientToolCalls(calls)
            yield Finished(turn.finish_reason, usage.prompt_tokens, usage.completion_tokens)
            return
        rounds_used += 1
        session = await open_session(
            replica, ctx, messages, "".join(text), turn.calls, rounds_used, classified
        )
        # A held stream keeps only what it needs while it waits; the conversation is in
        # Redis, and the claim after the decision reads it back.
        del tools, text, turn, classified
        yield SessionOpened(session.id)
        if session.status is SessionStatus.PENDING:
            yield ApprovalNotice(session.view)
            if not ctx.hold:
                return
        asked, messages = messages, []
        async for event in _decide_then_run(replica, session, messages):
            if isinstance(event, ReleasedToClient):  # the client runs these: its turn now
                ids = [call["id"] for call in event.calls]
                await _remember_taint(replica, ctx, asked, "".join(answer), ids)
                yield ClientToolCalls(event.calls)
                yield Finished("tool_calls", usage.prompt_tokens, usage.completion_tokens)
                return
            yield event
        del asked


async def resume(
    replica: Replica, session_id: str, *, hold: bool, token: int = 0
) -> AsyncIterator[Event]:
    """Continue a session here: wait for its decision if it is pending, run its tools, then
    the model. With a lease `token`, take over from a runner that stopped mid-way."""
    record = await replica.store.get(session_id)
    if token:
        traces.run_event("run takeover", record, token=token, replica=replica.runner_id)
    messages: list[dict[str, Any]] = []
    async for event in _decide_then_run(replica, record, messages, token):
        if isinstance(event, ReleasedToClient):
            yield ClientToolCalls(event.calls)
            yield Finished("tool_calls", 0, 0)
            return
        yield event
    ctx = ChatContext.of_session(record, hold=hold)
    async for event in converse(replica, ctx, messages, record.continuation.rounds_used):
        yield event


async def _decide_then_run(
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
        for progress in _start_events(record, taking_over=True):
            yield progress
        calls = record.view.tool_calls
        conversation.extend(tool_message(c) for c in calls if c.status is not CallStatus.RELEASED)
        async for handed in _hand_over(replica, record):
            yield handed
        return
    # The calls are queued in the session already. A runner taking over reports the progress
    # of every call again (its run sends only what its log does not hold yet).
    for started in _start_events(record, taking_over=bool(token)):
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


async def _remember_taint(
    replica: Replica, ctx: ChatContext, messages: list[dict[str, Any]], text: str, ids: list[str]
) -> None:
    """When the model answered with untrusted output in its context, mark its answer, so the
    client's next request, which carries it but not the server-side results, is tainted too."""
    scope = GrantScope(ctx.tenant, ctx.requester, ctx.conversation)
    untrusted = any(p.untrusted for p in provenance_of(replica, messages))
    if untrusted or await replica.taint.holds(scope, messages):
        await replica.taint.mark(scope)
        await replica.taint.mark_output(ctx.tenant, text, ids)


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
    beat = _Beat(settings.heartbeat_interval_s)
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
                yield _result_event(call)
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


_NOT_RUN = frozenset({CallStatus.REJECTED, CallStatus.DENIED, CallStatus.EXPIRED})
_FINISHED = frozenset({SessionStatus.COMPLETED, SessionStatus.FAILED})


_RAN = frozenset({CallStatus.RUNNING, CallStatus.SUCCEEDED, CallStatus.FAILED, CallStatus.UNKNOWN})


def _start_events(record: SessionRecord, *, taking_over: bool = False) -> list[ToolEvent]:
    """What a client is told as the session's calls start: each queued call is executing,
    each answered or refused one has its outcome. `taking_over`: also every call that is
    running or done (`executing`, and the result of each done one), which the runner that
    stopped may not have reported."""
    events = []
    for call in record.view.tool_calls:
        decision = call.decision
        if call.status is CallStatus.QUEUED or (taking_over and call.status in _RAN):
            if decision is not None and decision.decision == "edit":
                detail = {"arguments": decision.arguments, "edited": True, "by": "approver"}
            else:
                detail = {"arguments": call.arguments}
            events.append(ToolEvent("executing", call.id, call.name, detail))
            if call.status in CALL_DONE_STATUSES:
                events.append(_result_event(call))
        elif call.status is CallStatus.RESPONDED:
            content = decision.result if decision and decision.result is not None else ""
            detail = {"content": content, "by": "approver", "responded": True}
            events.append(ToolEvent("result", call.id, call.name, detail))
        elif call.status in _NOT_RUN:
            detail = {"reason": decision.reason if decision else "", "by": _actor(call)}
            events.append(ToolEvent("rejected", call.id, call.name, detail))
    return events


def _result_event(call: ToolCallView) -> ToolEvent:
    content = call.result.content if call.result else ""
    if call.status is CallStatus.SUCCEEDED:
        return ToolEvent("result", call.id, call.name, {"content": content})
    outcome = "unknown" if call.status is CallStatus.UNKNOWN else "failed"
    return ToolEvent("error", call.id, call.name, {"content": content, "outcome": outcome})


def _actor(call: ToolCallView) -> str:
    actor = call.decision.actor if call.decision else "policy"
    return actor if actor in ("policy", "deadline") else "approver"


class _Beat:
    """When the next heartbeat is due."""

    def __init__(self, interval_s: float) -> None:
        self.interval_s = interval_s
        self.next_at = time.monotonic() + interval_s

    def remaining(self) -> float:
        return max(self.next_at - time.monotonic(), 0.0)

    def due(self) -> bool:
        if time.monotonic() < self.next_at:
            return False
        self.next_at = time.monotonic() + self.interval_s
        return True
