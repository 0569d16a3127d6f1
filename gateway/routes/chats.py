"""What the two chat protocols' routes share: the conversation a request belongs to, and
the context its sessions keep."""

from __future__ import annotations

from typing import Any, Literal

from starlette.requests import Request

from core import tracing
from gateway.auth import Principal
from gateway.chat_context import ChatContext
from gateway.request_ids import request_id_of
from gateway.routes.guard import replica_of

CONVERSATION_HEADER = "X-Conversation-Id"
"""Response header with the conversation id grants are scoped to; send it back to keep them."""


def conversation_of(request: Request, caller: Principal) -> tuple[str, str]:
    """The issued conversation id the request belongs to, and the client's own label when
    what it sent as `X-Conversation-Id` was not an id issued to it."""
    sent = request.headers.get(CONVERSATION_HEADER, "")
    return replica_of(request).conversation_ids.resolve(sent, caller.tenant, caller.name)


def chat_context(
    request: Request,
    caller: Principal,
    conversation: tuple[str, str],
    *,
    model: str | None,
    protocol: Literal["openai", "legacy"],
    hold: bool,
    **choices: Any,
) -> ChatContext:
    """A new chat request's context: its choices, and who sent it, in which conversation,
    under which request id and trace."""
    issued, label = conversation
    return ChatContext(
        model=model or replica_of(request).settings.upstream_model,
        protocol=protocol,
        hold=hold,
        tenant=caller.tenant,
        requester=caller.name,
        conversation=issued,
        conversation_label=label,
        request_id=request_id_of(request.scope),
        trace=tracing.traceparent(),
        **choices,
    )
