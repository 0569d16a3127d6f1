"""Liveness and readiness."""

from __future__ import annotations

from redis.exceptions import RedisError
from starlette.requests import Request
from starlette.responses import JSONResponse

from core.connect import UNAVAILABLE_ERRORS
from gateway.conversation import Engine


async def healthz(request: Request) -> JSONResponse:
    """The process answers."""
    return JSONResponse({"status": "alive"})


_NOT_READY: tuple[type[Exception], ...] = (RedisError, OSError, *UNAVAILABLE_ERRORS)


async def readyz(request: Request) -> JSONResponse:
    """Redis answers within its bound; otherwise 503."""
    engine: Engine = request.app.state.engine
    try:
        await engine.store.redis.ping()
    except _NOT_READY as error:
        body = {"status": "unavailable", "redis": f"unreachable: {error}"}
        return JSONResponse(body, status_code=503)
    body = {"status": "ready", "redis": "ok", "held_streams": request.app.state.stream_slots.held}
    if request.app.state.authenticator.open:
        body["auth"] = "OPEN: no API keys are configured; anyone can chat and approve"
    return JSONResponse(body)
