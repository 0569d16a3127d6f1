"""How each outcome of a call is told: to the model, its one tool message; to the client,
its tool events."""

from __future__ import annotations

from typing import Any

import orjson

from core.records import CALL_DONE_STATUSES, CallStatus, SessionRecord, ToolCallView
from gateway.events import ToolEvent


def tool_message(call: ToolCallView) -> dict[str, Any]:
    """The one tool message the model sees for a call, whatever became of it."""
    decision = call.decision
    reason = (decision.reason if decision else "") or "no reason given"
    match call.status:
        case CallStatus.SUCCEEDED:
            content = call.result.content if call.result else ""
        case CallStatus.FAILED:
            content = f"Error: {call.result.content if call.result else 'unknown error'}"
        case CallStatus.RESPONDED:
            content = decision.result if decision and decision.result is not None else ""
        case CallStatus.REJECTED:
            content = f"The user rejected this tool call, so it was not run. Reason: {reason}"
        case CallStatus.DENIED:
            content = f"This tool call was not run. Reason: {reason.rstrip('.')}."
        case CallStatus.EXPIRED:
            content = "No one approved this tool call before the deadline, so it was not run."
        case CallStatus.UNKNOWN:
            detail = call.result.content if call.result else ""
            content = f"The outcome of this tool call is unknown: {detail}."
        case _:
            content = "The outcome of this tool call is unknown: no result arrived in time."
    if decision is not None and decision.decision == "edit":
        edited = orjson.dumps(decision.arguments).decode()
        note = f" Reason: {decision.reason}" if decision.reason else ""
        content = (
            f"The approver edited this call's arguments to {edited} before it ran.{note}\n{content}"
        )
    return {"role": "tool", "tool_call_id": call.upstream_id or call.id, "content": content}


_NOT_RUN = frozenset({CallStatus.REJECTED, CallStatus.DENIED, CallStatus.EXPIRED})


_RAN = frozenset({CallStatus.RUNNING, CallStatus.SUCCEEDED, CallStatus.FAILED, CallStatus.UNKNOWN})


def start_events(record: SessionRecord, *, taking_over: bool = False) -> list[ToolEvent]:
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
                events.append(result_event(call))
        elif call.status is CallStatus.RESPONDED:
            content = decision.result if decision and decision.result is not None else ""
            detail = {"content": content, "by": "approver", "responded": True}
            events.append(ToolEvent("result", call.id, call.name, detail))
        elif call.status in _NOT_RUN:
            detail = {"reason": decision.reason if decision else "", "by": _actor(call)}
            events.append(ToolEvent("rejected", call.id, call.name, detail))
    return events


def result_event(call: ToolCallView) -> ToolEvent:
    content = call.result.content if call.result else ""
    if call.status is CallStatus.SUCCEEDED:
        return ToolEvent("result", call.id, call.name, {"content": content})
    outcome = "unknown" if call.status is CallStatus.UNKNOWN else "failed"
    return ToolEvent("error", call.id, call.name, {"content": content, "outcome": outcome})


def _actor(call: ToolCallView) -> str:
    actor = call.decision.actor if call.decision else "policy"
    return actor if actor in ("policy", "deadline") else "approver"
