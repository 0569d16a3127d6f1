"""`create_app(settings)`: builds everything a replica needs; nothing is global."""

from __future__ import annotations

import asyncio
import contextlib
import gc
import os
import secrets
import socket
import time
from collections.abc import AsyncIterator
from typing import Any

import structlog
from starlette.applications import Starlette
from starlette.exceptions import HTTPException
from starlette.middleware import Middleware
from starlette.middleware.cors import CORSMiddleware
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.types import ASGIApp, Receive, Scope, Send

from core import tracing
from core.asgi import ResponseStart, response_status
from core.audit import AuditLog
from core.connect import UNAVAILABLE_ERRORS, connect
from core.errors import (
    GatewayError,
    InvalidRequest,
    MethodNotAllowed,
    NotFound,
    RedisUnavailable,
    SessionNotFound,
)
from core.grants import ConversationIds, ConversationTaint, Grants
from core.handoffs import Handoffs
from core.idempotency import IdempotentRequests
from core.jobs import JobQueue
from core.keys import Keys
from core.logs import AccessLog
from core.outbox import Outbox
from core.runlog import CLUSTER_RENEWALS, RunLog
from core.settings import Settings
from core.store import SessionStore
from core.tools import ToolBox
from core.wakeups import StatusPoller, WakeupHub
from gateway import openapi
from gateway.auth import Authenticator
from gateway.hosts import HostGuard
from gateway.metrics import Metrics
from gateway.replica import Replica
from gateway.request_ids import RequestIds
from gateway.routes import LEGACY_PATHS, OPERATIONS, routes
from gateway.routes import legacy as legacy_routes
from gateway.routes.models import ModelList
from gateway.runs import RunRegistry
from gateway.sse import StreamSlots
from gateway.sweeper import Sweeper
from gateway.traces import TracedRequests
from gateway.upstream import make_upstream
from gateway.webhooks import WebhookSender

log = structlog.stdlib.get_logger(__name__)

API_DESCRIPTION = (
    "An OpenAI-compatible gateway that holds risky LLM tool calls for a human decision. "
    "Generated from the code's own models (gateway/openapi.py)."
)


def new_runner_id() -> str:
    """A replica's id: in its Redis client names, run leases and every log line (`replica`)."""
    return f"{socket.gethostname()}:{os.getpid()}:{secrets.token_hex(4)}"


def create_app(settings: Settings, runner_id: str = "") -> Starlette:
    """The gateway's ASGI app for one replica (`runner_id`: a new one unless given)."""
    keys = Keys.of(settings.key_prefix, cluster=settings.redis_cluster)
    toolbox = ToolBox.from_settings(settings)
    runner_id = runner_id or new_runner_id()
    authenticator = Authenticator(settings.api_keys)
    tenants = {key.tenant for key in settings.api_keys} or {"default"}
    metrics = Metrics(tenants, toolbox.tools)
    if authenticator.open:
        log.warning(
            "no_api_keys",
            message="NO API KEYS CONFIGURED: the gateway is OPEN; anyone who reaches it can "
            "chat and approve tool calls. Set GATEWAY_API_KEYS (see docs/authentication.md).",
        )

    @contextlib.asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[None]:
        tracing.configure("approval-gateway", runner_id)
        redis = connect(settings, f"gateway:{runner_id}")
        audit_log = AuditLog(redis, keys, settings.audit_maxlen, settings.audit_retention_s)
        outbox = Outbox(
            redis,
            keys,
            audit_log,
            settings.session_retention_s,
            runner_id,
            lock_ms=int(settings.lease_s * 1000),
        )
        hooks = frozenset(kind for target in settings.webhooks for kind in target.events)
        store = SessionStore(
            redis,
            keys,
            settings.session_retention_s,
            audit_log,
            outbox=outbox,
            hooks=hooks,
            on_expired=metrics.expired,
        )
        hub = WakeupHub(redis, keys, subscribe_timeout_s=settings.redis_timeout_s)
        await hub.start()
        # Lease renewals and status polls keep streams alive: their own small pool, so a
        # burst of requests queueing on the main one cannot make a lease lapse. (A cluster's
        # pools do not queue: room for every renewal call in flight, per node.)
        small = CLUSTER_RENEWALS + 4 if settings.redis_cluster else 4
        background = connect(settings, f"gateway:{runner_id}:bg", max_connections=small)
        poller = StatusPoller(background, keys, settings.reread_interval_s)
        polling = asyncio.create_task(poller.run_forever(), name="status-poller")
        webhooks = WebhookSender(settings.webhooks, settings.webhook_max_attempts)
        await webhooks.start()
        metrics.follow_webhooks(webhooks.outcomes)
        upstream = make_upstream(settings)
        app.state.replica = Replica(
            settings=settings,
            store=store,
            jobs=JobQueue(redis, keys),
            hub=hub,
            poller=poller,
            toolbox=toolbox,
            upstream=upstream,
            runner_id=runner_id,
            audit=audit_log,
            grants=Grants(redis, keys),
            conversation_ids=await ConversationIds.load(redis, keys),
            taint=ConversationTaint(redis, keys, settings.session_retention_s),
            idempotency=IdempotentRequests(redis, keys, settings.idempotency_retention_s),
            handoffs=Handoffs(redis, keys, settings.session_retention_s),
            webhooks=webhooks if settings.webhooks else None,
            metrics=metrics,
        )
        app.state.stream_slots = slots = StreamSlots(settings.max_held_streams)
        metrics.follow_held_streams(lambda: slots.held)
        app.state.models = ModelList(app.state.replica)
        app.state.started_at = time.time()
        app.state.authenticator = authenticator
        runlog = RunLog(redis, keys, settings.session_retention_s, background=background)
        app.state.runs = runs = RunRegistry(app.state.replica, runlog)
        sweeper = asyncio.create_task(
            Sweeper(store, runner_id, adopt_orphans=runs.adopt_orphans).run_forever(),
            name="sweeper",
        )

        async def session_view(session_id: str) -> dict[str, Any] | None:
            try:
                record = await store.get(session_id, view_only=True)
            except SessionNotFound:
                return None
            return record.view.model_dump(mode="json")

        relay = asyncio.create_task(
            outbox.relay_forever(webhooks.deliver if hooks else None, session_view),
            name="outbox-relay",
        )
        # What start-up built (modules, schemas, tools) lives as long as the process: keep it
        # out of the collector's way. And collect the young generation less often, so the
        # short-lived objects of a request die young instead of being promoted: with
        # thousands of held streams, each full collection pauses the loop for about a
        # second (see BENCHMARKS.md, P4).
        gc.collect()
        gc.freeze()
        gc.set_threshold(50_000, 20, 100)
        log.info("replica_ready", tools=len(toolbox.tools))
        try:
            yield
        finally:
            await runs.drain()
            for task in (relay, sweeper, polling):
                task.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await task
            await webhooks.stop(grace_s=settings.shutdown_grace_s / 2)
            await hub.stop()
            await upstream.aclose()
            await background.aclose()
            await redis.aclose()
            tracing.shutdown()

    exception_handlers = {
        GatewayError: _gateway_error,
        HTTPException: _http_error,
        **dict.fromkeys(UNAVAILABLE_ERRORS, _redis_error),
    }
    # Open mode serves loopback hosts only (DNS rebinding); `allowed_hosts` narrows any mode.
    guard = Middleware(HostGuard, allowed=settings.allowed_hosts, respond=error_response)
    # Outermost: every response is counted, the ones the other layers answer too.
    middleware = [
        Middleware(ResponseStart, on_start=metrics.responded),
        Middleware(RequestIds),
        Middleware(AccessLog),
        Middleware(UnexpectedErrors),
    ]
    if tracing.wanted():
        middleware.insert(2, Middleware(TracedRequests))  # inside RequestIds: ids are known
    if settings.allowed_hosts or authenticator.open:
        middleware.append(guard)
    if settings.cors_origins:
        middleware.append(_cors(settings.cors_origins))
    app = Starlette(
        routes=routes(),
        middleware=middleware,
        lifespan=lifespan,
        exception_handlers=exception_handlers,
    )
    app.state.metrics = metrics
    app.state.openapi = openapi.rendered(OPERATIONS, "Approval gateway", API_DESCRIPTION)
    return app


class UnexpectedErrors:
    """Pure ASGI middleware: a bug's exception becomes the JSON 500, and stops here.

    Starlette's handler for `Exception` answers and then re-raises, and uvicorn closes the
    connection on a raise: behind nginx, the next request sent on that keep-alive
    connection fails (a POST with a 502, and a failure counted against the replica). A
    response already started is cut short, so then the exception goes on and closes it.
    """

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        try:
            await self.app(scope, receive, send)
        except Exception:
            if response_status(scope):  # started: it can only be cut short
                raise
            log.exception("unexpected_error", method=scope["method"], path=scope["path"])
            unexpected = GatewayError("the gateway failed unexpectedly; the error is logged")
            await error_response(scope["path"], unexpected)(scope, receive, send)


def _cors(origins: list[str]) -> Middleware:
    """Browser clients on these origins may call the API (their key still decides what)."""
    return Middleware(
        CORSMiddleware,
        allow_origins=origins,
        allow_methods=["GET", "POST"],
        allow_headers=["*"],  # the SDKs send several x-stainless-* headers
        expose_headers=["x-conversation-id", "x-request-id"],
        max_age=600,
    )


def error_response(path: str, error: GatewayError) -> JSONResponse:
    """The one rendering of an error: the first version's shape on its paths."""
    body = legacy_routes.error_body(error) if path in LEGACY_PATHS else error.body()
    return JSONResponse(body, status_code=error.status_code)


async def _gateway_error(request: Request, error: Exception) -> Response:
    assert isinstance(error, GatewayError)
    return error_response(request.url.path, error)


async def _redis_error(request: Request, error: Exception) -> Response:
    log.warning("redis_unavailable", error=str(error))
    request.app.state.metrics.redis_failed()
    return await _gateway_error(request, RedisUnavailable(f"redis is unavailable: {error}"))


async def _http_error(request: Request, error: Exception) -> Response:
    assert isinstance(error, HTTPException)
    kinds: dict[int, type[GatewayError]] = {404: NotFound, 405: MethodNotAllowed}
    kind = kinds.get(error.status_code, InvalidRequest if error.status_code < 500 else GatewayError)
    response = error_response(request.url.path, kind(error.detail))
    response.headers.update(error.headers or {})  # a 405's `Allow` (RFC 9110 requires it)
    return response
