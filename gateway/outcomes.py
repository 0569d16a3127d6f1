"""How each outcome of a call reads to the model: its one tool message."""

from __future__ import annotations

from typing import Any

import orjson

from core.records import CallStatus, ToolCallView


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
