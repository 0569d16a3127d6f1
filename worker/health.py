"""The worker's HTTP port, served in its event loop: `GET /healthz` and `GET /metrics`."""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator
from typing import TYPE_CHECKING

import structlog
from aiohttp import web
from prometheus_client import CONTENT_TYPE_LATEST

if TYPE_CHECKING:
    from worker.main import Worker

log = structlog.stdlib.get_logger(__name__)
SHUTDOWN_TIMEOUT_S = 1.0
"""A probe or a scrape still open when the worker stops gets this long."""


def create_app(worker: Worker) -> web.Application:
    """`/healthz`: 200 while the worker consumes and Redis answered recently, else 503 with
    the reason; `/metrics`: the worker's metrics in Prometheus text format."""

    async def healthz(request: web.Request) -> web.Response:
        problem = worker.health_problem()
        if problem is None:
            return web.json_response({"status": "ok", "worker": worker.name})
        body = {"status": "unavailable", "worker": worker.name, "reason": problem}
        return web.json_response(body, status=503)

    async def metrics(request: web.Request) -> web.Response:
        response = web.Response(body=worker.metrics.render())
        response.headers["Content-Type"] = CONTENT_TYPE_LATEST
        return response

    app = web.Application()
    app.router.add_get("/healthz", healthz)
    app.router.add_get("/metrics", metrics)
    return app


@contextlib.asynccontextmanager
async def health_port(worker: Worker, host: str, port: int) -> AsyncIterator[None]:
    """Serve `create_app(worker)` on `host:port` inside the block; port 0 serves nothing."""
    if port == 0:
        yield
        return
    runner = web.AppRunner(create_app(worker), access_log=None, shutdown_timeout=SHUTDOWN_TIMEOUT_S)
    await runner.setup()
    try:
        await web.TCPSite(runner, host, port).start()
        log.info("health_port_serving", host=host, port=port)  # /healthz and /metrics
        yield
    finally:
        await runner.cleanup()
