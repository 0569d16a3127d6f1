"""The approval loop: stream a model turn, hold risky calls for a decision, run tools, continue.

One loop serves every wire protocol: it yields `gateway.events` and the
protocol modules render them. A conversation that needs approval opens an
approval session in Redis; whoever continues it later (the holder of the
stream, or a replica serving the first version's approve call) needs nothing
but that session.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Any

import structlog

from core.errors import UpstreamError
from core.grants import GrantScope
from core.records import SessionStatus
from gateway import traces
from gateway.chat_context import ChatContext
from gateway.events import (
    ApprovalNotice,
    ClientToolCalls,
    Event,
    Finished,
    ReleasedToClient,
    SessionOpened,
    TextPieces,
)
from gateway.handoff import client_call
from gateway.holding import decide_then_run
from gateway.opening import classify_turn, open_session, provenance_of
from gateway.replica import Replica
from gateway.upstream import TurnEnd

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
        async for event in decide_then_run(replica, session, messages):
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
    async for event in decide_then_run(replica, record, messages, token):
        if isinstance(event, ReleasedToClient):
            yield ClientToolCalls(event.calls)
            yield Finished("tool_calls", 0, 0)
            return
        yield event
    ctx = ChatContext.of_session(record, hold=hold)
    async for event in converse(replica, ctx, messages, record.continuation.rounds_used):
        yield event


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
