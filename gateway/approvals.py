"""The approvals API: list pending sessions, read one, decide it. Served by every replica."""

from __future__ import annotations

from typing import Any

from starlette.requests import Request
from starlette.responses import JSONResponse

from core.errors import InvalidRequest
from core.records import ApprovalSession
from gateway import decisions
from gateway.auth import Principal, principal_of
from gateway.conversation import Engine
from gateway.requests import DecisionRequest, query_int, read_json, validate


async def list_approvals(request: Request) -> JSONResponse:
    """Pending sessions of the caller's tenant (every tenant's for an admin)."""
    principal = principal_of(request)
    principal.require("requester", "approver")
    engine: Engine = request.app.state.engine
    status = request.query_params.get("status", "pending")
    if status != "pending":
        raise InvalidRequest("status: only 'pending' can be listed")
    limit = query_int(request.query_params, "limit", 100, 1, 1000)
    # A non-admin's list is read from its tenant's own index: another tenant's pending
    # sessions cannot crowd it out of the first `limit`.
    tenant = None if "admin" in principal.roles else principal.tenant
    sessions = [s for s in await engine.store.list_pending(limit, tenant) if principal.sees(s)]
    conversation = request.query_params.get("conversation")
    if conversation:  # the issued id, or the client's own label
        sessions = [s for s in sessions if conversation in (s.conversation, s.conversation_label)]
    request_id = request.query_params.get("request_id")
    if request_id:
        sessions = [s for s in sessions if s.request_id == request_id]
    return JSONResponse({"object": "list", "data": [shown(principal, s) for s in sessions]})


async def get_approval(request: Request) -> JSONResponse:
    principal = principal_of(request)
    principal.require("requester", "approver")
    engine: Engine = request.app.state.engine
    record = await engine.store.get(request.path_params["session_id"], view_only=True)
    principal.require_sees(record.view)
    return JSONResponse(shown(principal, record.view))


def shown(principal: Principal, session: ApprovalSession) -> dict[str, Any]:
    """A session as `principal` may see it: a requester sees the conversation id (what
    grants are scoped to) of its own sessions only."""
    view = session.model_dump(mode="json")
    if principal.name != session.requester and not principal.has("approver"):
        view["conversation"] = ""
    return view


async def decide(request: Request) -> JSONResponse:
    """Decide every pending call the same way, or each call its own way; repeats are 200."""
    principal = principal_of(request)
    engine: Engine = request.app.state.engine
    body = validate(DecisionRequest, await read_json(request, engine.settings.max_body_bytes))
    record = await decisions.decide(engine, principal, request.path_params["session_id"], body)
    return JSONResponse(record.view.model_dump(mode="json"))
