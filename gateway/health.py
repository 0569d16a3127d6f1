"""Liveness and readiness."""

from __future__ import annotations

from redis.exceptions import RedisError
from starlette.requests import Request
from starlette.responses import JSONResponse

from gateway.conversation import Engine


async def healthz(request: Request) -> JSONResponse:
    """The process answers."""
    return JSONResponse({"status": "alive"})


async def readyz(request: Request) -> JSONResponse:
    """Redis answers within its bound; otherwise 503."""
    engine: Engine = request.app.state.engine
    try:
        await engine.store.redis.ping()
    except (RedisError, OSError) as error:
        body = {"status": "unavailable", "redis": f"unreachable: {error}"}
        return JSONResponse(body, status_code=503)
    body = {"status": "ready", "redis": "ok", "held_streams": request.app.state.stream_slots.held}
    if request.app.state.authenticator.open:
        body["auth"] = "OPEN: no API keys are configured; anyone can chat and approve"
    return JSONResponse(body)
