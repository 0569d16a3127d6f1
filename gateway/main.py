"""`gateway` command: serve one replica with uvicorn, draining held streams on SIGTERM."""

from __future__ import annotations

import argparse
import asyncio
import sys
from types import FrameType

import structlog
import uvicorn
from starlette.applications import Starlette

from core import logs
from core.settings import Settings
from gateway.app import create_app, new_runner_id
from gateway.hosts import is_loopback

log = structlog.stdlib.get_logger(__name__)


class DrainingServer(uvicorn.Server):
    """On SIGTERM/SIGINT, first hand every held stream over, then shut down as uvicorn does.

    Draining tells each held stream's client where to re-attach and gives the runs'
    leases back, so the clients continue on another replica at once; uvicorn then stops
    listening, waits (bounded) for connections to close, and exits.
    """

    def __init__(self, config: uvicorn.Config, app: Starlette) -> None:
        super().__init__(config)
        self.app = app
        self.drain_task: asyncio.Task[None] | None = None

    def handle_exit(self, sig: int, frame: FrameType | None) -> None:
        runs = getattr(self.app.state, "runs", None)
        if runs is not None and self.drain_task is None:
            loop = asyncio.get_event_loop()
            self.drain_task = loop.create_task(runs.drain())
        super().handle_exit(sig, frame)


def main() -> None:
    """Parse `--host/--port`, then serve."""
    parser = argparse.ArgumentParser(description="Approval gateway replica")
    parser.add_argument("--host", help="override GATEWAY_HOST")
    parser.add_argument("--port", type=int, help="override GATEWAY_PORT")
    args = parser.parse_args()
    settings = Settings()
    runner_id = new_runner_id()
    logs.configure(
        "gateway",
        replica=runner_id,
        fmt=settings.log_format,
        level=settings.log_level,
        log_arguments=settings.log_arguments,
    )
    host = args.host or settings.host
    refusal = open_bind_refusal(settings, host)
    if refusal:
        log.error("open_bind_refused", reason=refusal)
        sys.exit(2)
    app = create_app(settings, runner_id)
    config = uvicorn.Config(
        app,
        host=host,
        port=args.port or settings.port,
        log_config=None,  # logs.configure's handler renders uvicorn's records too
        log_level="warning",
        loop="uvloop",
        http="httptools",
        timeout_graceful_shutdown=settings.shutdown_grace_s,
        backlog=settings.listen_backlog,
    )
    DrainingServer(config, app).run()


def open_bind_refusal(settings: Settings, host: str) -> str | None:
    """Why the gateway must not listen on `host`: open mode (no API keys) off loopback,
    unless `allow_open_bind` says so; None when it may."""
    if settings.api_keys or settings.allow_open_bind or is_loopback(host):
        return None
    return (
        f"gateway: refusing to listen on {host!r} with no API keys configured: anyone who "
        "can reach it could chat and approve tool calls. Set GATEWAY_API_KEYS (see "
        "docs/authentication.md), listen on 127.0.0.1 (GATEWAY_HOST or --host), or set "
        "GATEWAY_ALLOW_OPEN_BIND=true to serve it open anyway."
    )


if __name__ == "__main__":
    main()
