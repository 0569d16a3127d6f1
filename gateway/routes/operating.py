"""What operators and tools read without a key: liveness, readiness, this replica's
metrics and the API document. Keep them off the public balancer, except `/openapi.json`."""

from __future__ import annotations

from typing import Literal

from prometheus_client import CONTENT_TYPE_LATEST
from pydantic import BaseModel
from pydantic.json_schema import SkipJsonSchema
from starlette.requests import Request
from starlette.responses import JSONResponse, Response

from core.connect import UNAVAILABLE_ERRORS, ping
from gateway.metrics import Metrics
from gateway.openapi import Operation, Reply
from gateway.routes.guard import replica_of, slots_of


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
    replica = replica_of(request)
    try:
        await ping(replica.store.redis)
    except UNAVAILABLE_ERRORS as error:
        body = Readiness(status="unavailable", redis=f"unreachable: {error}")
        return JSONResponse(body.model_dump(exclude_none=True), status_code=503)
    body = Readiness(status="ready", redis="ok", held_streams=slots_of(request).held)
    if request.app.state.authenticator.open:
        body.auth = "OPEN: no API keys are configured; anyone can chat and approve"
    return JSONResponse(body.model_dump(exclude_none=True))


async def metrics_page(request: Request) -> Response:
    """`GET /metrics`: this replica's metrics, in Prometheus's text format. It needs no API
    key (as /healthz): scrape each replica directly, and keep it off the public balancer."""
    metrics: Metrics = request.app.state.metrics
    await metrics.refresh_pending(replica_of(request).store)
    return Response(metrics.exposition(), media_type=CONTENT_TYPE_LATEST)


async def openapi_json(request: Request) -> Response:
    """`GET /openapi.json`: this document; it needs no key (it says what the API is, not
    what it holds)."""
    return Response(request.app.state.openapi, media_type="application/json")


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
    Operation(
        "GET",
        "/metrics",
        "This replica's metrics, in Prometheus's text format",
        {200: Reply("The metrics (docs/metrics.md)", text=("text/plain",))},
        description="No key: scrape each replica directly, off the public balancer.",
        keyed=False,
        tag="health",
    ),
    Operation(
        "GET",
        "/openapi.json",
        "This API as an OpenAPI 3.1 document",
        {200: Reply("The document", json={"type": "object"})},
        keyed=False,
        tag="meta",
    ),
)
