"""`ChatContext`: one chat request's choices, kept with its sessions."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Literal

from core.records import SessionRecord


@dataclass(slots=True)
class ChatContext:
    """One chat request's choices, kept with its sessions so any replica can continue it."""

    model: str
    protocol: Literal["openai", "legacy"]
    hold: bool
    """Wait for decisions in this request (False: end the stream at the approval notice)."""
    params: dict[str, Any] = field(default_factory=dict)
    client_tools: list[dict[str, Any]] = field(default_factory=list)
    logged: bool = False
    """A streamed request: from its first approval notice on, its events go to a run log."""
    log_id: str = ""
    """The run log, once the first approval notice opened it."""
    tenant: str = "default"
    requester: str = "anonymous"
    conversation: str = ""
    """The gateway-issued conversation id grants are scoped to (`X-Conversation-Id`)."""
    conversation_label: str = ""
    """What the client sent as `X-Conversation-Id` when it was not an id issued to it."""
    request_id: str = ""
    """The request's `X-Request-Id`, kept on its sessions."""
    trace: str = ""
    """The `traceparent` of the chat request's span: the parent of the conversation's spans
    (gateway.traces), kept on its sessions so any replica continues the trace."""

    @classmethod
    def of_session(cls, record: SessionRecord, *, hold: bool) -> ChatContext:
        return cls(
            model=record.view.model,
            protocol=record.view.protocol,
            hold=hold,
            params=record.continuation.params,
            client_tools=record.continuation.client_tools,
            logged=bool(record.log_id),
            log_id=record.log_id,
            tenant=record.view.tenant,
            requester=record.view.requester,
            conversation=record.view.conversation,
            conversation_label=record.view.conversation_label,
            request_id=record.view.request_id,
            trace=record.trace,
        )
