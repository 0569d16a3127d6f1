"""Client calls across requests: what the client gets, and the history the model sees next.

An approved call of a client-declared tool goes to the client under the gateway's id, with
exactly the approved arguments; nothing else of its turn does. The client runs it and sends
the result in its next request. That request's history is then restored before the model
sees it: the client's assistant message becomes the model's whole turn again (every call,
under the ids the model's history uses), followed by the tool messages the gateway kept
(server-side results, rejections, answers) and the client's own results. A history that
changes a gated call (other arguments, a result for a call that was never released) is
refused with 409 and audited; the results clients send back are audited (size-capped).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, Any

import orjson

from core.arguments import json_problem
from core.audit import AuditEntry
from core.errors import HistoryMismatch, SessionNotFound
from core.records import CallStatus, SessionRecord, ToolCallView, arguments_sha256
from gateway.outcomes import tool_message

if TYPE_CHECKING:
    from gateway.chat_context import ChatContext
    from gateway.replica import Replica

MAX_AUDITED_RESULT = 2048


def approved_arguments(call: ToolCallView) -> dict[str, Any]:
    """The arguments a call was approved with (the edited ones after an edit)."""
    decision = call.decision
    if decision is not None and decision.decision == "edit" and decision.arguments is not None:
        return decision.arguments
    return call.arguments


def client_call(call: ToolCallView, call_id: str) -> dict[str, Any]:
    """A client call as OpenAI sends it, with its approved arguments."""
    arguments = orjson.dumps(approved_arguments(call)).decode()
    return {
        "id": call_id,
        "type": "function",
        "function": {"name": call.name, "arguments": arguments},
    }


async def restore_history(
    replica: Replica, ctx: ChatContext, messages: list[dict[str, Any]]
) -> list[dict[str, Any]]:
    """`messages` with every turn whose client calls the gateway released put back whole."""
    # Every id is looked up (`max_messages` bounds them): padding a history with made-up
    # calls must not push a gated one out of sight.
    ids = [
        call["id"]
        for message in messages
        if message.get("role") == "assistant"
        for call in message.get("tool_calls") or ()
        if isinstance(call.get("id"), str)
    ]
    found = await replica.handoffs.sessions_of(ids)
    if not found:
        return messages
    records = {}
    for session_id in set(found.values()):
        record = await _own_session(replica, ctx, session_id)
        if record is not None:
            records[session_id] = record
    restored = _Restored(records, found)
    try:
        for message in messages:
            restored.take(message)
        restored.finish()
    except HistoryMismatch as error:
        refused = AuditEntry(
            "history_refused",
            session=restored.session_id,
            actor=ctx.requester,
            tenant=ctx.tenant,
            detail={"code": error.code, "message": error.message},
        )
        await replica.audit.append([refused])
        raise
    await replica.audit.append(restored.entries)
    return restored.messages


async def _own_session(replica: Replica, ctx: ChatContext, session_id: str) -> SessionRecord | None:
    """The session, if it is this requester's (another key's call ids restore nothing)."""
    try:
        record = await replica.store.get(session_id)
    except SessionNotFound:
        return None
    # Not the conversation: a client that sends no conversation id gets a new one each time.
    view = record.view
    return record if (view.tenant, view.requester) == (ctx.tenant, ctx.requester) else None


class _Restored:
    """Rebuilds a history message by message."""

    def __init__(self, records: Mapping[str, SessionRecord], found: Mapping[str, str]) -> None:
        self.records = records
        self.found = found
        self.messages: list[dict[str, Any]] = []
        self.entries: list[AuditEntry] = []
        self.released: dict[str, tuple[SessionRecord, ToolCallView]] = {}
        """gateway id -> its session and call, for the calls restored so far"""
        self.gated: set[str] = set()
        """every call id of the restored turns: a result for one not released is refused"""
        self.awaiting: set[str] = set()
        """released calls of the turn just restored that have no result yet"""
        self.session_id = ""

    def take(self, message: dict[str, Any]) -> None:
        if message.get("role") == "tool":
            call_id = str(message.get("tool_call_id"))
            if call_id in self.awaiting:
                self.awaiting.discard(call_id)
                self._client_result(message, *self.released[call_id])
                return
            if call_id in self.gated:
                raise HistoryMismatch(
                    f"a tool message answers call {call_id!r}, which was never released to "
                    "the client, or answers it twice"
                )
            self.messages.append(message)
            return
        self.finish()  # a turn's results come right after it
        if message.get("role") == "assistant" and message.get("tool_calls"):
            record = self._record_of(message)
            if record is not None:
                self._restore_turn(message, record)
                return
        self.messages.append(message)

    def finish(self) -> None:
        """The turn just restored has a result for every released call."""
        if self.awaiting:
            raise HistoryMismatch(f"calls {sorted(self.awaiting)} have no tool message")

    def _record_of(self, message: dict[str, Any]) -> SessionRecord | None:
        for call in message["tool_calls"]:
            session_id = self.found.get(str(call.get("id")), "")
            if session_id in self.records:
                return self.records[session_id]
        return None

    def _restore_turn(self, message: dict[str, Any], record: SessionRecord) -> None:
        self.session_id = record.id
        calls = {call.id: call for call in record.view.tool_calls}
        if set(calls) & self.gated:
            raise HistoryMismatch(f"the turn of approval session {record.id!r} appears twice")
        released = {c.id for c in record.view.tool_calls if c.status is CallStatus.RELEASED}
        for sent in message["tool_calls"]:
            call_id = str(sent.get("id"))
            call = calls.get(call_id)
            if call_id not in released or call is None:
                raise HistoryMismatch(f"call {call_id!r} was not released to the client")
            if (sent.get("function") or {}).get("name") != call.name:
                raise HistoryMismatch(f"call {call_id!r} names another tool than the approved one")
            if not _same_arguments(sent, call):
                raise HistoryMismatch(
                    f"call {call_id!r} carries arguments other than the approved ones"
                )
            self.released[call_id] = (record, call)
            self.awaiting.add(call_id)
        self.gated.update(calls)
        self.messages.append(record.continuation.messages[-1])  # the model's whole turn
        self.messages += [
            tool_message(call)
            for call in record.view.tool_calls
            if call.status is not CallStatus.RELEASED
        ]

    def _client_result(
        self, message: dict[str, Any], record: SessionRecord, call: ToolCallView
    ) -> None:
        content = message.get("content")
        text = content if isinstance(content, str) else orjson.dumps(content).decode()
        restored = {**message, "tool_call_id": call.upstream_id or call.id}
        decision = call.decision
        if decision is not None and decision.decision == "edit":
            # The model's turn holds its own arguments: it must learn what really ran.
            edited = orjson.dumps(decision.arguments).decode()
            restored["content"] = (
                f"The approver edited this call's arguments to {edited} before it ran.\n{text}"
            )
        self.messages.append(restored)
        self.entries.append(
            AuditEntry.of_call(
                "client_result",
                record.view,
                call,
                record.view.requester,
                content=text[:MAX_AUDITED_RESULT],
                truncated=len(text) > MAX_AUDITED_RESULT,
            )
        )


def _same_arguments(sent: Mapping[str, Any], call: ToolCallView) -> bool:
    raw = (sent.get("function") or {}).get("arguments")
    try:
        arguments = orjson.loads(raw) if isinstance(raw, str) else raw
    except orjson.JSONDecodeError:
        return False
    if not isinstance(arguments, dict) or json_problem(arguments) is not None:
        return False
    return arguments_sha256(arguments) == arguments_sha256(approved_arguments(call))


def released_calls(record: SessionRecord) -> Sequence[ToolCallView]:
    return [c for c in record.view.tool_calls if c.status is CallStatus.RELEASED]
