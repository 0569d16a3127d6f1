"""The approvals API: list pending sessions, read one, decide it. Served by every replica.

Reading one session (or the list with `?include=context`) adds what an approver needs to
decide: `context` (the conversation's last user message, the model's text before the
calls, and the tool results since that message, each marked when its tool's output is
untrusted) and `schemas` (each called tool's JSON Schema for its arguments, which an edit
must fit). Only an approver and the session's own requester see the context.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any, Literal

import orjson
from pydantic import BaseModel, Field
from pydantic.json_schema import SkipJsonSchema
from starlette.requests import Request
from starlette.responses import JSONResponse

from core.errors import (
    BodyTooLarge,
    DecisionConflict,
    EditRefused,
    Forbidden,
    HashMismatch,
    InvalidArguments,
    InvalidRequest,
    RedisUnavailable,
    SelfApproval,
    SessionExpired,
    SessionNotFound,
    UnknownToolCall,
    UnsupportedMediaType,
)
from core.records import ApprovalSession, SessionRecord, SessionStatus
from gateway import decisions, traces
from gateway.auth import Principal
from gateway.openapi import Operation, Param, Reply
from gateway.opening import provenance_of
from gateway.replica import Replica
from gateway.requests import DecisionRequest, query_int, read_json, validate
from gateway.routes.guard import replica_of


class TextItem(BaseModel):
    """A message's text, cut at `MAX_CONTEXT_CHARS`."""

    text: str
    truncated: bool


class PriorToolResult(BaseModel):
    """A tool result in the conversation since its last user message."""

    tool_call_id: str
    name: str
    untrusted: bool
    """The tool's output may carry text the model should not obey."""
    text: str
    truncated: bool


class ApprovalContext(BaseModel):
    """What led to the calls."""

    user_message: TextItem | None
    assistant_text: TextItem | None
    """The model's text before the calls."""
    tool_results: list[PriorToolResult]


def _absent(value: object) -> bool:
    return value is None


class ShownSession(ApprovalSession):
    """An approval session as the approvals API shows it to one caller: `context` and
    `schemas` only to an approver and its requester, and only where they are asked for."""

    context: ApprovalContext | SkipJsonSchema[None] = Field(default=None, exclude_if=_absent)
    schemas: dict[str, Any] | SkipJsonSchema[None] = Field(default=None, exclude_if=_absent)
    """Each called tool's JSON Schema for its arguments, by tool name."""


class SessionPage(BaseModel):
    """`GET /v1/approvals`: pending sessions, soonest deadline first."""

    object: Literal["list"] = "list"
    data: list[ShownSession]


async def list_approvals(request: Request, caller: Principal) -> JSONResponse:
    """Pending sessions of the caller's tenant (every tenant's for an admin). Guarded:
    `requester` or `approver`."""
    replica = replica_of(request)
    status = request.query_params.get("status", SessionStatus.PENDING)
    if status != SessionStatus.PENDING:
        raise InvalidRequest("status: only 'pending' can be listed")
    limit = query_int(request.query_params, "limit", 100, 1, 1000)
    # A non-admin's list is read from its tenant's own index: another tenant's pending
    # sessions cannot crowd it out of the first `limit`.
    tenant = None if "admin" in caller.roles else caller.tenant
    sessions = [s for s in await replica.store.list_pending(limit, tenant) if caller.sees(s)]
    conversation = request.query_params.get("conversation")
    if conversation:  # the issued id, or the client's own label
        sessions = [s for s in sessions if conversation in (s.conversation, s.conversation_label)]
    request_id = request.query_params.get("request_id")
    if request_id:
        sessions = [s for s in sessions if s.request_id == request_id]
    include = request.query_params.get("include", "")
    if include not in ("", "context"):
        raise InvalidRequest("include: only 'context' can be included", param="include")
    shown_sessions = [shown(caller, s) for s in sessions]
    if include:
        readable = [view.id for view in shown_sessions if _may_read_context(caller, view)]
        full = {record.id: record for record in await replica.store.get_many(readable)}
        for view in shown_sessions:
            if view.id in full:  # (a session gone since the list was read has none)
                explain(replica, view, full[view.id])
    return JSONResponse(SessionPage(data=shown_sessions).model_dump(mode="json"))


async def get_approval(request: Request, caller: Principal) -> JSONResponse:
    """Guarded: `requester` or `approver`."""
    replica = replica_of(request)
    session_id = request.path_params["session_id"]
    record = await replica.store.get(session_id, view_only=True)
    caller.require_sees(record.view)
    view = shown(caller, record.view)
    if _may_read_context(caller, view):  # only then is the conversation read
        explain(replica, view, await replica.store.get(session_id))
    return JSONResponse(view.model_dump(mode="json"))


def _may_read_context(caller: Principal, view: ApprovalSession) -> bool:
    return caller.has("approver") or caller.name == view.requester


MAX_CONTEXT_CHARS = 4000
"""Longest text of one context item; longer ones are cut and marked `truncated`."""
MAX_CONTEXT_RESULTS = 5
"""Tool results shown: the last ones since the last user message."""
MAX_SCHEMA_BYTES = 64 * 1024
"""A larger schema (a client may declare one) is left out of `schemas`: the inbox then edits
that call as exact JSON, still checked by the server against the whole schema."""


def explain(replica: Replica, view: ShownSession, record: SessionRecord) -> None:
    """Add `context` and `schemas` to `view`, from its session read with its conversation."""
    messages = record.continuation.messages
    last_user = max((i for i, m in enumerate(messages) if m.get("role") == "user"), default=-1)
    before_calls = messages[-1] if messages and messages[-1].get("role") == "assistant" else {}
    # One provenance per tool message, in order: paired by position, not by content.
    origins = iter(provenance_of(replica, messages))
    results = []
    for index, message in enumerate(messages):
        if message.get("role") != "tool":
            continue
        origin = next(origins)
        if index > last_user:
            item = _text_item(message.get("content"))
            results.append(
                PriorToolResult(
                    tool_call_id=origin.tool_call_id,
                    name=origin.name,
                    untrusted=origin.untrusted,
                    text=item.text,
                    truncated=item.truncated,
                )
            )
    view.context = ApprovalContext(
        user_message=_text_item(messages[last_user].get("content")) if last_user >= 0 else None,
        assistant_text=_text_item(before_calls.get("content")) if before_calls else None,
        tool_results=results[-MAX_CONTEXT_RESULTS:],
    )
    view.schemas = _schemas(replica, record)


def _text_item(content: object) -> TextItem:
    text = _text_of(content)
    cut = len(text) > MAX_CONTEXT_CHARS
    return TextItem(text=text[:MAX_CONTEXT_CHARS] if cut else text, truncated=cut)


def _text_of(content: object) -> str:
    """A message's content as text: a string, or the text parts of a list of parts."""
    if content is None:
        return ""
    if isinstance(content, str):
        return content
    if isinstance(content, Sequence):
        return "\n".join(str(part.get("text", "")) for part in content if isinstance(part, Mapping))
    return str(content)


def _schemas(replica: Replica, record: SessionRecord) -> dict[str, Any]:
    """The argument schema of each tool the session calls, by tool name."""
    declared = {
        str((tool.get("function") or {}).get("name")): (tool.get("function") or {}).get(
            "parameters"
        )
        or {}
        for tool in record.continuation.client_tools
    }
    server = {s["function"]["name"]: s["function"]["parameters"] for s in replica.toolbox.schemas}
    schemas: dict[str, Any] = {}
    for call in record.view.tool_calls:
        schema = declared.get(call.name) if call.side == "client" else server.get(call.name)
        if schema is not None and len(orjson.dumps(schema)) <= MAX_SCHEMA_BYTES:
            schemas[call.name] = schema
    return schemas


def shown(caller: Principal, session: ApprovalSession) -> ShownSession:
    """A session as `caller` may see it: a requester sees the conversation id (what
    grants are scoped to) of its own sessions only."""
    view = ShownSession.model_construct(**dict(session))
    if caller.name != session.requester and not caller.has("approver"):
        view.conversation = ""
    return view


async def decide(request: Request, caller: Principal) -> JSONResponse:
    """Decide every pending call the same way, or each call its own way; repeats are 200.
    Guarded: any known key; `gateway.decisions` requires `approver`, once it found the
    session, so that the refusal is audited."""
    replica = replica_of(request)
    body = validate(DecisionRequest, await read_json(request, replica.settings.max_body_bytes))
    record = await decisions.decide(replica, caller, request.path_params["session_id"], body)
    traces.decided(record, body, caller.name)
    return JSONResponse(record.view.model_dump(mode="json"))


_SESSION_ID = Param("session_id", "An approval session's id (`as_...`)", "path")
_READ_ERRORS = (Forbidden, SessionNotFound, RedisUnavailable)
OPERATIONS = (
    Operation(
        "GET",
        "/v1/approvals",
        "Pending approval sessions, soonest deadline first",
        {
            200: Reply(
                "The caller's tenant's pending sessions (every tenant's for an admin)", SessionPage
            )
        },
        description="Needs the role `requester` or `approver`.",
        params=(
            Param("status", "Only `pending` can be listed", schema={"enum": ["pending"]}),
            Param(
                "limit",
                "At most this many",
                schema={"type": "integer", "minimum": 1, "maximum": 1000, "default": 100},
            ),
            Param("conversation", "Only this conversation's (its issued id, or its label)"),
            Param("request_id", "Only those the chat request with this `X-Request-Id` opened"),
            Param(
                "include",
                "`context`: add `context` and `schemas` where the caller may read them",
                schema={"enum": ["", "context"]},
            ),
        ),
        errors=(InvalidRequest, *_READ_ERRORS),
    ),
    Operation(
        "GET",
        "/v1/approvals/{session_id}",
        "One approval session, with its context for approvers and its requester",
        {200: Reply("The session", ShownSession)},
        description="Needs the role `requester` or `approver`, in the session's tenant "
        "(another tenant's session is `404`).",
        params=(_SESSION_ID,),
        errors=_READ_ERRORS,
    ),
    Operation(
        "POST",
        "/v1/approvals/{session_id}/decision",
        "Decide every pending call one way, or each call its own way",
        {200: Reply("The session after the decision (unchanged for a repeat)", ApprovalSession)},
        description="Needs the role `approver` (and what the tool's policy asks). Every item "
        "is checked before any is applied: one bad item refuses the whole post.",
        body=DecisionRequest,
        params=(_SESSION_ID,),
        errors=(
            InvalidRequest,
            UnknownToolCall,
            InvalidArguments,
            BodyTooLarge,
            UnsupportedMediaType,
            SelfApproval,
            EditRefused,
            DecisionConflict,
            HashMismatch,
            SessionExpired,
            *_READ_ERRORS,
        ),
    ),
)
