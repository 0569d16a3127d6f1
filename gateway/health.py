"""Liveness and readiness."""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel
from pydantic.json_schema import SkipJsonSchema
from starlette.requests import Request
from starlette.responses import JSONResponse

from core.connect import UNAVAILABLE_ERRORS, ping
from gateway.openapi import Operation, Reply
from gateway.replica import Replica


class Liveness(BaseModel):
    """The process answers."""

    status: Literal["alive"] = "alive"


class Readiness(BaseModel):
    """Whether Redis answers within its bound."""

    status: Literal["ready", "unavailable"]
    redis: str
    """`ok`, or `unreachable: <why>`."""
    held_streams: int | SkipJsonSchema[None] = None
    """Streams this replica holds (when ready)."""
    auth: str | SkipJsonSchema[None] = None
    """Said only when no API keys are configured: the gateway is open."""


async def healthz(request: Request) -> JSONResponse:
    """The process answers."""
    return JSONResponse(Liveness().model_dump())


async def readyz(request: Request) -> JSONResponse:
    """Redis answers within its bound; otherwise 503."""
    replica: Replica = request.app.state.replica
    try:
        await ping(replica.store.redis)
    except UNAVAILABLE_ERRORS as error:
        body = Readiness(status="unavailable", redis=f"unreachable: {error}")
        return JSONResponse(body.model_dump(exclude_none=True), status_code=503)
    body = Readiness(status="ready", redis="ok", held_streams=request.app.state.stream_slots.held)
    if request.app.state.authenticator.open:
        body.auth = "OPEN: no API keys are configured; anyone can chat and approve"
    return JSONResponse(body.model_dump(exclude_none=True))


OPERATIONS = (
    Operation(
        "GET",
        "/healthz",
        "Liveness: the process answers",
        {200: Reply("Alive", Liveness)},
        keyed=False,
        tag="health",
    ),
    Operation(
        "GET",
        "/readyz",
        "Readiness: Redis answers within its bound",
        {
            200: Reply("Ready", Readiness),
            503: Reply("Redis does not answer", Readiness),
        },
        keyed=False,
        tag="health",
    ),
)
