"""A webhook receiver: verifies `X-Gateway-Signature`, drops repeats, prints each event.

Run `WEBHOOK_SECRET=s3cret python examples/webhook_receiver.py 9000`, then start the gateway with
`GATEWAY_WEBHOOKS='[{"url": "http://127.0.0.1:9000/webhooks", "secret": "s3cret"}]'`.
It imports nothing from the gateway: a receiver is a program of its own.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import os
import re
import sys
import time
from collections import OrderedDict
from collections.abc import Callable, Mapping
from typing import Any

import uvicorn
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

TOLERANCE_S = 300


def verify_request(secret: bytes, headers: Mapping[str, str], body: bytes) -> bool:
    """Whether `body` was signed with `secret` within 5 minutes of now.

    `headers` must look names up case-insensitively, as Starlette's `request.headers` does.
    """
    timestamp, signatures = "", []
    for item in headers.get("X-Gateway-Signature", "").split(","):
        key, _, value = item.strip().partition("=")
        if key == "t":
            timestamp = value
        elif key == "v1":  # several during a key rotation: any one may match
            signatures.append(value)
    if not re.fullmatch(r"[0-9]{1,12}", timestamp):
        return False
    if abs(time.time() - int(timestamp)) > TOLERANCE_S:  # a replayed old request
        return False
    signed = timestamp.encode() + b"." + body
    expected = hmac.new(secret, signed, hashlib.sha256).hexdigest()
    return any([s.isascii() and hmac.compare_digest(expected, s) for s in signatures])


class SeenEvents:
    """The ids of the last `size` events: a repeated delivery is acknowledged, not handled."""

    def __init__(self, size: int = 10_000) -> None:
        self.size = size
        self._ids: OrderedDict[str, None] = OrderedDict()

    def first_time(self, event_id: str) -> bool:
        if event_id in self._ids:
            return False
        self._ids[event_id] = None
        if len(self._ids) > self.size:
            self._ids.popitem(last=False)
        return True


def create_app(secret: bytes, handle: Callable[[dict[str, Any]], None] = print) -> Starlette:
    """A receiver at `POST /webhooks` that passes each verified, new event to `handle`."""
    seen = SeenEvents()

    async def receive(request: Request) -> Response:
        body = await request.body()
        if not verify_request(secret, request.headers, body):
            return Response("bad signature", status_code=401)
        event = json.loads(body)
        if seen.first_time(event["id"]):
            handle(event)
        return Response(status_code=204)

    return Starlette(routes=[Route("/webhooks", receive, methods=["POST"])])


def main(port: str = "9000") -> None:
    secret = os.environ["WEBHOOK_SECRET"].encode()
    uvicorn.run(create_app(secret), host="127.0.0.1", port=int(port))


if __name__ == "__main__":
    main(*sys.argv[1:])
