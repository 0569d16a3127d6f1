"""A real webhook receiver for the tests: uvicorn in a thread, recording every POST."""

from __future__ import annotations

import contextlib
import json
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

import pytest
import uvicorn
from pydantic import SecretStr
from starlette.applications import Starlette
from starlette.datastructures import Headers
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route
from starlette.types import ASGIApp

from core.settings import WebhookTarget
from examples.webhook_receiver import verify_request
from tests.processes import free_port

SECRET = b"whsec-test"
SESSION = {"id": "ses_1", "status": "pending", "tool_calls": [{"name": "explode"}]}


@contextlib.contextmanager
def serve_in_thread(app: ASGIApp) -> Iterator[str]:
    """Run `app` under uvicorn on a free port in a thread of its own; its base URL."""
    port = free_port()
    config = uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning", lifespan="off")
    server = uvicorn.Server(config)
    thread = threading.Thread(target=server.run, name=f"receiver-{port}", daemon=True)
    thread.start()
    try:
        deadline = time.monotonic() + 10
        while not server.started:
            assert thread.is_alive() and time.monotonic() < deadline, "receiver did not start"
            time.sleep(0.01)
        yield f"http://127.0.0.1:{port}"
    finally:
        server.should_exit = True
        thread.join(10)


@dataclass
class Received:
    """One POST as the receiver saw it."""

    path: str
    headers: Headers
    """Looked up case-insensitively, as receivers do."""
    body: bytes
    signed: bool
    """`verify_request` of the example receiver with `SECRET`."""
    at: float
    status: int = 200
    """What the receiver answered."""

    @property
    def event(self) -> dict[str, Any]:
        event: dict[str, Any] = json.loads(self.body)
        return event


@dataclass
class Receiver:
    """Records every POST; answers each path from a script of statuses (then 200)."""

    url: str = ""
    requests: list[Received] = field(default_factory=list)
    scripts: dict[str, list[tuple[int, dict[str, str]]]] = field(default_factory=dict)
    lock: threading.Lock = field(default_factory=threading.Lock)

    def answer(self, path: str, *statuses: int, headers: dict[str, str] | None = None) -> None:
        self.scripts[path] = [(status, headers or {}) for status in statuses]

    def at(self, path: str) -> list[Received]:
        return [received for received in self.requests if received.path == path]

    def target(self, path: str, events: list[str] | None = None) -> WebhookTarget:
        if events is None:
            return WebhookTarget(url=self.url + path, secret=SecretStr(SECRET.decode()))
        return WebhookTarget(url=self.url + path, secret=SecretStr(SECRET.decode()), events=events)

    async def endpoint(self, request: Request) -> Response:
        body = await request.body()
        path = request.url.path
        signed = verify_request(SECRET, request.headers, body)
        with self.lock:
            script = self.scripts.get(path) or [(200, {})]
            status, headers = script.pop(0) if len(script) > 1 else script[0]
            received = Received(path, request.headers, body, signed, time.monotonic(), status)
            self.requests.append(received)
        return Response(status_code=status, headers=headers)


@pytest.fixture(name="receiver")
def receiver_fixture() -> Iterator[Receiver]:
    receiver = Receiver()
    app = Starlette(routes=[Route("/{name}", receiver.endpoint, methods=["POST"])])
    with serve_in_thread(app) as url:
        receiver.url = url
        yield receiver
