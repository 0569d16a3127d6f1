"""The first version's protocol, kept exactly for its clients, with sessions in Redis.

`POST /v1/chat/completion` streams `{"type": "content"}` events, then either
`[DONE]` or an `approvalRequired` event and `[DONE]`: the stream does not wait.
`POST /v1/chat/approve` (on any replica) decides, then streams the tool run and
the model's continuation. Errors before a stream starts are HTTP errors with a
`{"type": "error", "error": ..., "code": ...}` body; errors during a stream are
`{"type": "error", "error": ...}` events.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any, Literal

import structlog
from pydantic import BaseModel, ConfigDict, Field
from starlette.requests import Request
from starlette.responses import JSONResponse, Response

from core.errors import (
    BodyTooLarge,
    DecisionConflict,
    Forbidden,
    GatewayError,
    InvalidRequest,
    Overloaded,
    RedisUnavailable,
    SelfApproval,
    SessionExpired,
    SessionNotFound,
    UnsupportedMediaType,
    WrongProtocol,
)
from core.records import CallStatus, SessionStatus
from gateway import decisions, sse, traces
from gateway.auth import Principal
from gateway.conversation import converse, resume
from gateway.events import ApprovalNotice, Event, TextPieces, ToolEvent
from gateway.openapi import EventStream, Operation, Reply
from gateway.requests import (
    DecisionRequest,
    LegacyApproveRequest,
    LegacyChatRequest,
    read_json,
    validate,
)
from gateway.routes.chats import CONVERSATION_HEADER, chat_context, conversation_of
from gateway.routes.guard import replica_of, slots_of

log = structlog.stdlib.get_logger(__name__)


async def chat_completion(request: Request, caller: Principal) -> Response:
    """Guarded: `requester`; refused while Redis is down."""
    replica = replica_of(request)
    body = validate(LegacyChatRequest, await read_json(request, replica.settings.max_body_bytes))
    params: dict[str, Any] = {"temperature": body.temperature, "max_tokens": body.max_tokens}
    ctx = chat_context(
        request,
        caller,
        conversation_of(request, caller),
        model=body.model,
        protocol="legacy",
        hold=False,
        params={k: v for k, v in params.items() if v is not None},
    )
    messages = [m.model_dump() for m in body.messages]
    headers = {CONVERSATION_HEADER: ctx.conversation}
    return slots_of(request).response(_stream(converse(replica, ctx, messages)), headers)


async def approve(request: Request, caller: Principal) -> Response:
    """Guarded: any known key (`gateway.decisions` requires `approver`, audited)."""
    replica = replica_of(request)
    body = validate(LegacyApproveRequest, await read_json(request, replica.settings.max_body_bytes))
    decision = (
        DecisionRequest(decision="approve")
        if body.approved
        else DecisionRequest(decision="reject", reason="the user declined")
    )
    record = await decisions.decide(replica, caller, body.sessionid, decision, protocol="legacy")
    traces.decided(record, decision, caller.name)
    return slots_of(request).response(_stream(resume(replica, body.sessionid, hold=False)))


class LegacyHealth(BaseModel):
    """`GET /health` of the first version."""

    status: Literal["healthy"] = "healthy"


class LegacyError(BaseModel):
    """The first version's error body, plus the stable code."""

    type: Literal["error"] = "error"
    error: str
    """The message."""
    code: str


class LegacyContent(BaseModel):
    """A piece of the model's text."""

    type: Literal["content"] = "content"
    content: str


class LegacyToolCall(BaseModel):
    id: str
    name: str
    arguments: dict[str, Any]


class LegacyApprovalRequired(BaseModel):
    """Calls wait for a decision: the stream ends after it; approve with `sessionId`."""

    model_config = ConfigDict(serialize_by_alias=True)

    type: Literal["approvalRequired"] = "approvalRequired"
    session_id: str = Field(alias="sessionId")
    tool_calls: list[LegacyToolCall] = Field(alias="toolCalls")


class LegacyToolExecuting(BaseModel):
    type: Literal["toolExecuting"] = "toolExecuting"
    tool: str
    arguments: Any


class LegacyToolResult(BaseModel):
    type: Literal["toolResult"] = "toolResult"
    tool: str
    result: Any


class LegacyStreamError(BaseModel):
    """An error after the stream started; `[DONE]` follows."""

    type: Literal["error"] = "error"
    error: str


async def health(request: Request) -> JSONResponse:
    return JSONResponse(LegacyHealth().model_dump())


def error_body(error: GatewayError) -> dict[str, Any]:
    """The first version's error shape, plus the stable code."""
    return LegacyError(error=error.message, code=error.code).model_dump()


async def _stream(events: AsyncIterator[Event]) -> AsyncIterator[bytes]:
    async for part in sse.failures_as(_parts(events), _failed, "legacy_stream_failed"):
        yield part
    yield sse.DONE


async def _parts(events: AsyncIterator[Event]) -> AsyncIterator[bytes]:
    async for event in events:
        if isinstance(event, TextPieces):
            yield b"".join(sse.data({"type": "content", "content": p}) for p in event.pieces)
            continue
        rendered = _render(event)
        if rendered is not None:
            yield sse.data(rendered.model_dump())


def _failed(error: GatewayError) -> bytes:
    return sse.data(LegacyStreamError(error=error.message).model_dump())


def _render(event: Event) -> BaseModel | None:
    match event:
        case ApprovalNotice(session) if session.status is SessionStatus.PENDING:
            pending = [
                LegacyToolCall(id=c.id, name=c.name, arguments=c.arguments)
                for c in session.tool_calls
                if c.status is CallStatus.PENDING
            ]
            return LegacyApprovalRequired(sessionId=session.id, toolCalls=pending)
        case ToolEvent(type="executing"):
            return LegacyToolExecuting(tool=event.name, arguments=event.detail["arguments"])
        case ToolEvent(type="result" | "error"):
            return LegacyToolResult(tool=event.name, result=event.detail["content"])
    return None


_EVENTS = EventStream(
    (
        LegacyContent,
        LegacyApprovalRequired,
        LegacyToolExecuting,
        LegacyToolResult,
        LegacyStreamError,
    )
)
_BODY_ERRORS = (InvalidRequest, BodyTooLarge, UnsupportedMediaType)
_LENIENT = (
    "The body is read as the first version read it, leniently: a value that converts "
    'plainly to the field\'s type is taken (`"0.5"` for 0.5, `"true"` for true).'
)
OPERATIONS = (
    Operation(
        "POST",
        "/v1/chat/completion",
        "The first version's chat: streams content, or ends at an approval",
        {
            200: Reply(
                "`content` events, then `[DONE]`; or, when a tool needs approval, an "
                "`approvalRequired` event and `[DONE]` (the session waits in Redis)",
                stream=_EVENTS,
                headers={"X-Conversation-Id": "The conversation grants are scoped to"},
            )
        },
        description=f"Needs the role `requester`. {_LENIENT}",
        body=LegacyChatRequest,
        errors=(*_BODY_ERRORS, Forbidden, Overloaded, RedisUnavailable),
        error_model=LegacyError,
        tag="first version",
    ),
    Operation(
        "POST",
        "/v1/chat/approve",
        "The first version's decision: decides every pending call, streams the rest",
        {
            200: Reply(
                "`toolExecuting`, `toolResult` and `content` events, then `[DONE]`",
                stream=_EVENTS,
            )
        },
        description=f"Needs the role `approver`. {_LENIENT}",
        body=LegacyApproveRequest,
        errors=(
            *_BODY_ERRORS,
            Forbidden,
            SelfApproval,
            SessionNotFound,
            DecisionConflict,
            WrongProtocol,
            SessionExpired,
            Overloaded,
            RedisUnavailable,
        ),
        error_model=LegacyError,
        tag="first version",
    ),
    Operation(
        "GET",
        "/health",
        "The first version's health check",
        {200: Reply("Healthy", LegacyHealth)},
        keyed=False,
        tag="first version",
    ),
)
