"""The approvals API: list pending sessions, read one, decide it. Served by every replica."""

from __future__ import annotations

from starlette.requests import Request
from starlette.responses import JSONResponse

from core.errors import InvalidRequest
from gateway.conversation import Engine
from gateway.requests import DecisionRequest, read_json, validate


async def list_approvals(request: Request) -> JSONResponse:
    engine: Engine = request.app.state.engine
    status = request.query_params.get("status", "pending")
    if status != "pending":
        raise InvalidRequest("status: only 'pending' can be listed")
    limit = request.query_params.get("limit", "100")
    if not limit.isdigit() or not 1 <= int(limit) <= 1000:
        raise InvalidRequest("limit: must be an integer from 1 to 1000")
    sessions = await engine.store.list_pending(int(limit))
    return JSONResponse({"object": "list", "data": [s.model_dump(mode="json") for s in sessions]})


async def get_approval(request: Request) -> JSONResponse:
    engine: Engine = request.app.state.engine
    record = await engine.store.get(request.path_params["session_id"])
    return JSONResponse(record.view.model_dump(mode="json"))


async def decide(request: Request) -> JSONResponse:
    """Apply one decision to every pending call; the same decision again is a 200 repeat."""
    engine: Engine = request.app.state.engine
    body = validate(DecisionRequest, await read_json(request, engine.settings.max_body_bytes))
    _applied, record = await engine.store.decide_all(
        request.path_params["session_id"], body.decision, body.reason, actor="anonymous"
    )
    return JSONResponse(record.view.model_dump(mode="json"))
