"""The first version's protocol, kept exactly for its clients, with sessions in Redis.

`POST /v1/chat/completion` streams `{"type": "content"}` events, then either
`[DONE]` or an `approvalRequired` event and `[DONE]`: the stream does not wait.
`POST /v1/chat/approve` (on any replica) decides, then streams the tool run and
the model's continuation. Errors before a stream starts are HTTP errors with a
`{"type": "error", "error": ..., "code": ...}` body; errors during a stream are
`{"type": "error", "error": ...}` events.
"""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator
from typing import Any

from starlette.requests import Request
from starlette.responses import JSONResponse, Response

from core.errors import GatewayError
from gateway import decisions, sse
from gateway.auth import principal_of
from gateway.completions import CONVERSATION_HEADER
from gateway.conversation import ChatContext, Engine, converse, resume
from gateway.events import ApprovalNotice, Event, TextPieces, ToolEvent
from gateway.request_ids import request_id_of
from gateway.requests import (
    DecisionRequest,
    LegacyApproveRequest,
    LegacyChatRequest,
    read_json,
    validate,
)

log = logging.getLogger(__name__)


async def chat_completion(request: Request) -> Response:
    principal = principal_of(request)
    principal.require("requester")
    engine: Engine = request.app.state.engine
    engine.check_redis()
    body = validate(LegacyChatRequest, await read_json(request, engine.settings.max_body_bytes))
    conversation, label = engine.conversation_ids.resolve(
        request.headers.get("x-conversation-id", ""), principal.tenant, principal.name
    )
    params: dict[str, Any] = {"temperature": body.temperature, "max_tokens": body.max_tokens}
    ctx = ChatContext(
        model=body.model or engine.settings.upstream_model,
        protocol="legacy",
        hold=False,
        params={k: v for k, v in params.items() if v is not None},
        tenant=principal.tenant,
        requester=principal.name,
        conversation=conversation,
        conversation_label=label,
        request_id=request_id_of(request.scope),
    )
    messages = [m.model_dump() for m in body.messages]
    slots: sse.StreamSlots = request.app.state.stream_slots
    headers = {CONVERSATION_HEADER: ctx.conversation}
    return slots.response(_stream(converse(engine, ctx, messages)), headers)


async def approve(request: Request) -> Response:
    principal = principal_of(request)
    engine: Engine = request.app.state.engine
    body = validate(LegacyApproveRequest, await read_json(request, engine.settings.max_body_bytes))
    decision = (
        DecisionRequest(decision="approve")
        if body.approved
        else DecisionRequest(decision="reject", reason="the user declined")
    )
    await decisions.decide(engine, principal, body.sessionid, decision, protocol="legacy")
    slots: sse.StreamSlots = request.app.state.stream_slots
    return slots.response(_stream(resume(engine, body.sessionid, hold=False)))


async def health(request: Request) -> JSONResponse:
    return JSONResponse({"status": "healthy"})


def error_body(error: GatewayError) -> dict[str, str]:
    """The first version's error shape, plus the stable code."""
    return {"type": "error", "error": error.message, "code": error.code}


async def _stream(events: AsyncIterator[Event]) -> AsyncIterator[bytes]:
    try:
        async for event in events:
            if isinstance(event, TextPieces):
                yield b"".join(sse.data({"type": "content", "content": p}) for p in event.pieces)
                continue
            rendered = _render(event)
            if rendered is not None:
                yield sse.data(rendered)
    except sse.STREAM_ERRORS as raised:
        error = sse.as_gateway_error(raised)
        log.warning("legacy stream ended by %s: %s", error.code, error.message)
        yield sse.data({"type": "error", "error": error.message})
    yield sse.DONE


def _render(event: Event) -> dict[str, Any] | None:
    match event:
        case ApprovalNotice(session) if session.status == "pending":
            pending = [c for c in session.tool_calls if c.status == "pending"]
            return {
                "type": "approvalRequired",
                "sessionId": session.id,
                "toolCalls": [
                    {"id": c.id, "name": c.name, "arguments": c.arguments} for c in pending
                ],
            }
        case ToolEvent(type="executing"):
            return {
                "type": "toolExecuting",
                "tool": event.name,
                "arguments": event.detail["arguments"],
            }
        case ToolEvent(type="result" | "error"):
            return {"type": "toolResult", "tool": event.name, "result": event.detail["content"]}
    return None
