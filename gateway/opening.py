"""Opening an approval session for one model turn: who each call is, whether it may run.

The model's output is untrusted, so nothing of a call's identity is taken from it:
each call gets the gateway's own id (the model's id, when it was present and unique
in its turn, is kept only to rebuild the model's history). A call's arguments are
checked strictly against its tool's schema before policy sees them. Calls of unknown
tools, with invalid arguments or past the per-turn cap are denied, and the model is
told why. Once untrusted tool output is in the conversation, calls that change
things ask even where policy says `auto`, and the session shows what came before.
"""

from __future__ import annotations

import secrets
import time
from collections import Counter
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import structlog

from core import tracing
from core.arguments import ArgumentChecker, ArgumentError, json_problem
from core.audit import AuditEntry
from core.errors import Overloaded
from core.grants import GrantScope
from core.policy import Side
from core.records import (
    ApprovalSession,
    CallStatus,
    Continuation,
    Decision,
    Provenance,
    SessionRecord,
    SessionStatus,
    ToolCallView,
    arguments_sha256,
)
from core.settings import PolicyMode
from core.store import new_session_id
from gateway.upstream import RequestedCall

if TYPE_CHECKING:
    from gateway.chat_context import ChatContext
    from gateway.replica import Replica

log = structlog.stdlib.get_logger(__name__)

MAX_PROVENANCE = 20
"""How many of the latest tool results a session lists as what came before its calls."""
_MAX_SHOWN_NAME = 128

_STATUS_OF_MODE = {
    PolicyMode.AUTO: CallStatus.APPROVED,
    PolicyMode.ASK: CallStatus.PENDING,
    PolicyMode.DENY: CallStatus.DENIED,
}


async def open_session(
    replica: Replica,
    ctx: ChatContext,
    messages: list[dict[str, Any]],
    text: str,
    calls: Sequence[RequestedCall],
    rounds_used: int,
    turn: ClassifiedTurn,
) -> SessionRecord:
    """Store the session of a classified turn (with its audit entries), and return it
    without its conversation (Redis has it; the claim reads it back)."""
    now = time.time()
    views, provenance, tainted = turn.views, turn.provenance, turn.tainted
    statuses = {v.status for v in views}
    session_id = new_session_id()
    structlog.contextvars.bind_contextvars(session_id=session_id)
    expires_at = now + replica.settings.approval_timeout_s
    if CallStatus.PENDING in statuses:
        await _reserve_pending(replica, session_id, ctx.tenant, expires_at)
        status = SessionStatus.PENDING
    elif CallStatus.APPROVED in statuses:
        status = SessionStatus.APPROVED
    else:
        status = SessionStatus.REJECTED
    session = ApprovalSession(
        id=session_id,
        status=status,
        protocol=ctx.protocol,
        model=ctx.model,
        created_at=now,
        expires_at=expires_at,
        tenant=ctx.tenant,
        requester=ctx.requester,
        conversation=ctx.conversation,
        conversation_label=ctx.conversation_label,
        request_id=ctx.request_id,
        tainted=tainted,
        provenance=provenance[-MAX_PROVENANCE:],
        tool_calls=views,
    )
    asked = [*messages, _assistant_message(text, calls, views)]
    continuation = Continuation(
        messages=asked, params=ctx.params, client_tools=ctx.client_tools, rounds_used=rounds_used
    )
    if ctx.logged and not ctx.log_id and status is SessionStatus.PENDING:
        ctx.log_id = session.id  # the first approval notice opens the run log
    record = SessionRecord(
        view=session,
        continuation=continuation,
        log_id=ctx.log_id,
        trace=ctx.trace,
        wait_span=tracing.new_span_id() if status is SessionStatus.PENDING else "",
    )
    initial = {v.id: v.decision for v in views if v.decision is not None}
    await replica.store.create(record, initial, _opened_entries(session))
    _log_opened(session)
    replica.metrics.decided(initial.values())
    if tainted:
        await replica.taint.mark(GrantScope(ctx.tenant, ctx.requester, ctx.conversation))
    return record.model_copy(update={"continuation": Continuation(messages=[])})


@dataclass(frozen=True, slots=True)
class ClassifiedTurn:
    """A turn's calls under the gateway's ids, each with its starting status."""

    views: list[ToolCallView]
    provenance: list[Provenance]
    tainted: bool

    @property
    def passes_through(self) -> bool:
        """Only client-declared calls, each allowed by policy: the client gets them at once,
        as without the gateway (no session)."""
        return all(
            v.side == "client" and v.status is CallStatus.APPROVED and v.decision is not None
            and v.decision.actor == "policy"
            for v in self.views
        )  # fmt: skip


async def classify_turn(
    replica: Replica,
    ctx: ChatContext,
    messages: list[dict[str, Any]],
    calls: Sequence[RequestedCall],
) -> ClassifiedTurn:
    """Each call's identity, checked arguments and starting status (policy, grants)."""
    scope = GrantScope(ctx.tenant, ctx.requester, ctx.conversation)
    provenance = provenance_of(replica, messages)
    # Untrusted output that ran in an earlier request of this conversation counts too: a
    # client's history never holds the results of server-side tools.
    tainted = any(p.untrusted for p in provenance) or await replica.taint.holds(scope, messages)
    ids = history_ids(calls, messages)
    checkers = client_checkers(ctx.client_tools)
    views = [
        _classify(replica, checkers, call, index, tainted, ids[index])
        for index, call in enumerate(calls)
    ]
    views = await _apply_grants(replica, scope, views, tainted, time.time())
    return ClassifiedTurn(views, provenance, tainted)


def client_checkers(client_tools: Sequence[Mapping[str, Any]]) -> dict[str, ArgumentChecker]:
    """The argument check of each client-declared tool, from the schema it declared."""
    checkers = {}
    for tool in client_tools:
        function = tool.get("function") or {}
        checkers[str(function.get("name"))] = ArgumentChecker(function.get("parameters") or {})
    return checkers


def provenance_of(replica: Replica, messages: Sequence[Mapping[str, Any]]) -> list[Provenance]:
    """The tool results in a conversation, oldest first, each marked untrusted when its
    tool's output may carry instructions (`untrusted_output`)."""
    names: dict[str, str] = {}
    found = []
    for message in messages:
        for call in message.get("tool_calls") or ():
            names[str(call.get("id"))] = str((call.get("function") or {}).get("name", ""))
        if message.get("role") == "tool":
            call_id = str(message.get("tool_call_id") or "")
            name = names.get(call_id) or str(message.get("name") or "")
            untrusted = replica.toolbox.untrusted_output(name)
            found.append(Provenance(tool_call_id=call_id, name=name, untrusted=untrusted))
    return found


def history_ids(calls: Sequence[RequestedCall], messages: Sequence[Mapping[str, Any]]) -> list[str]:
    """The id each call has in the model's history: its own when present and unique in the
    turn and the conversation so far (upstreams may check that their ids come back), else
    one the gateway makes."""
    counts = Counter(call.id for call in calls)
    used = {
        str(call.get("id"))
        for message in messages
        for call in message.get("tool_calls") or ()
        if isinstance(call, Mapping)
    }
    return [
        call.id
        if call.id and counts[call.id] == 1 and call.id not in used and len(call.id) <= 128
        else _mint()
        for call in calls
    ]


def _mint() -> str:
    return "call_" + secrets.token_hex(12)


def _classify(
    replica: Replica,
    client: Mapping[str, ArgumentChecker],
    call: RequestedCall,
    index: int,
    tainted: bool,
    history_id: str,
) -> ToolCallView:
    """A call under the gateway's id, with its starting status, and the decision policy
    made when it does not ask. `client`: the tools the request declared."""
    toolbox, cap = replica.toolbox, replica.settings.max_tool_calls_per_turn
    arguments = call.arguments if call.arguments is not None else {}
    side: Side = "client" if call.name in client and call.name not in toolbox else "server"
    checker = client.get(call.name) if side == "client" else toolbox.checkers.get(call.name)
    if index >= cap:
        mode, reason = PolicyMode.DENY, f"the model asked for more than {cap} calls in one turn"
    elif checker is None:
        mode, reason = PolicyMode.DENY, f"there is no tool named {call.name[:_MAX_SHOWN_NAME]!r}"
    else:
        try:
            arguments = checker.check(call.arguments)
        except ArgumentError as error:
            mode, reason = PolicyMode.DENY, f"invalid arguments: {error}"
        else:
            verdict = toolbox.verdict(call.name, arguments, untrusted_context=tainted, side=side)
            mode, reason = verdict.mode, verdict.reason
    if json_problem(arguments) is not None:
        arguments = {}  # denied already; kept out of the record, which is plain JSON
    view = ToolCallView(
        id=_mint(),
        name=call.name[:_MAX_SHOWN_NAME],
        arguments=arguments,
        arguments_sha256=arguments_sha256(arguments),
        policy=mode,
        policy_reason=reason,
        side=side,
        upstream_id=history_id,
        status=_STATUS_OF_MODE[mode],
    )
    if mode is PolicyMode.ASK:
        return view
    approve = mode is PolicyMode.AUTO
    decision = Decision(
        decision="approve" if approve else "reject",
        reason="" if approve else reason,
        actor="policy",
        decided_at=time.time(),
        arguments_sha256=view.arguments_sha256 if approve else "",
    )
    return view.model_copy(update={"decision": decision})


async def _apply_grants(
    replica: Replica, scope: GrantScope, views: list[ToolCallView], tainted: bool, now: float
) -> list[ToolCallView]:
    """Calls that would ask but are covered by a grant of this requester in this
    conversation run. Once untrusted output is in the conversation, only a grant for
    exactly these arguments covers a call: a standing "any arguments" grant does not."""
    asking = [(v.id, v.name, v.arguments_sha256) for v in views if v.status is CallStatus.PENDING]
    covered = await replica.grants.covering(scope, asking, exact_only=tainted)
    granted = []
    for view in views:
        grantor = covered.get(view.id)
        if grantor is None:
            granted.append(view)
            continue
        decision = Decision(
            decision="approve",
            reason=f"covered by a grant from {grantor} in this conversation",
            actor="grant",
            decided_at=now,
            arguments_sha256=view.arguments_sha256,
        )
        granted.append(
            view.model_copy(update={"status": CallStatus.APPROVED, "decision": decision})
        )
    return granted


async def _reserve_pending(replica: Replica, session_id: str, tenant: str, deadline: float) -> None:
    """Take a place in the deployment's and the tenant's pending sessions, atomically."""
    settings = replica.settings
    refused = await replica.store.reserve_pending(
        session_id,
        tenant,
        deadline,
        settings.max_pending_sessions,
        settings.max_pending_sessions_per_tenant,
    )
    if refused == "total":
        raise Overloaded("too many approval sessions are pending; try again later")
    if refused == "tenant":
        raise Overloaded(
            "this tenant has as many approval sessions pending as its share allows "
            "(GATEWAY_MAX_PENDING_SESSIONS_PER_TENANT); decide some or try again later"
        )


def _log_opened(session: ApprovalSession) -> None:
    """`session_opened`, and per call a debug line whose arguments only `log_arguments`
    lets through (core.logs.Redactor)."""
    calls = session.tool_calls
    log.info("session_opened", status=session.status.value, tools=[c.name for c in calls])
    for call in calls:
        log.debug("tool_call_arguments", call=call.id, tool=call.name, arguments=call.arguments)


def _opened_entries(session: ApprovalSession) -> list[AuditEntry]:
    entries = []
    for call in session.tool_calls:
        decision = call.decision
        if decision is None:
            event = "requested"
        elif call.status is CallStatus.DENIED:
            event = "denied"
        else:
            event = "granted_run" if decision.actor == "grant" else "auto_approved"
        detail: dict[str, Any] = {"reason": decision.reason} if decision and decision.reason else {}
        if session.tainted:
            detail["tainted"] = True
        entries.append(
            AuditEntry.of_call(
                event,
                session,
                call,
                decision.actor if decision else session.requester,
                arguments_sha256=call.arguments_sha256,
                policy=call.policy.value,
                policy_reason=call.policy_reason,
                requester=session.requester,
                upstream_id=call.upstream_id,
                **detail,
            )
        )
    return entries


def _assistant_message(
    text: str, calls: Sequence[RequestedCall], views: Sequence[ToolCallView]
) -> dict[str, Any]:
    """The model's turn as its history keeps it: its own names and argument text, under
    the history ids."""
    return {
        "role": "assistant",
        "content": text or None,
        "tool_calls": [
            {
                "id": view.upstream_id,
                "type": "function",
                "function": {"name": call.name, "arguments": call.raw_arguments},
            }
            for call, view in zip(calls, views, strict=True)
        ],
    }
