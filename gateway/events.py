"""What a conversation produces; each wire protocol renders these its own way."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from core.records import ApprovalSession


@dataclass(frozen=True, slots=True)
class ContentDelta:
    """A piece of the model's answer."""

    text: str


@dataclass(frozen=True, slots=True)
class ClientToolCalls:
    """Calls of client-supplied tools, returned to the client as ordinary `tool_calls`."""

    calls: list[dict[str, Any]]


@dataclass(frozen=True, slots=True)
class ApprovalNotice:
    """A session was opened (status pending) or ended without a decision (expired)."""

    session: ApprovalSession


@dataclass(frozen=True, slots=True)
class ToolEvent:
    """Progress of a server-side call: executing, result, rejected or error."""

    type: str
    tool_call_id: str
    name: str
    detail: dict[str, Any] = field(default_factory=dict)

    def payload(self) -> dict[str, Any]:
        return {
            "type": self.type,
            "tool_call_id": self.tool_call_id,
            "name": self.name,
            **self.detail,
        }


@dataclass(frozen=True, slots=True)
class Heartbeat:
    """Nothing happened for a heartbeat interval; keep the connection warm."""


@dataclass(frozen=True, slots=True)
class Finished:
    """The answer is complete."""

    finish_reason: str
    prompt_tokens: int
    completion_tokens: int


Event = ContentDelta | ClientToolCalls | ApprovalNotice | ToolEvent | Heartbeat | Finished
