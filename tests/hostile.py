"""The test side of the hostile upstream (tests/hostile_upstream.py): script turns, read requests.

Script a turn, put its marker in a user message, run the gateway against `hostile.url`, then
read what the gateway told the model with `hostile.requests(marker)`.
"""

from __future__ import annotations

import base64
import enum
import secrets
from typing import Any

import httpx

from tests.hostile_upstream import MARKER


class _Fresh(enum.Enum):
    ID = enum.auto()


def call(name: str, arguments: object, id: str | _Fresh | None = _Fresh.ID) -> dict[str, Any]:
    """A scripted tool call; `arguments` a string is sent verbatim, anything else JSON-encoded.
    `id` defaults to a fresh one; None leaves the id field out."""
    call_id = f"call_{secrets.token_hex(6)}" if id is _Fresh.ID else id
    return {"id": call_id, "name": name, "arguments": arguments}


def turn(*calls: dict[str, Any], text: str = "", **options: Any) -> dict[str, Any]:
    """A scripted turn: `options` are mode, finish_reason, cut (see `Turn`)."""
    return {"text": text, "calls": list(calls), **options}


def raw_turn(body: bytes) -> dict[str, Any]:
    """A turn answered with exactly `body` as a text/event-stream."""
    return {"mode": "raw", "raw": base64.b64encode(body).decode()}


class HostileUpstream:
    """A client of one running hostile upstream."""

    def __init__(self, base_url: str) -> None:
        self.base_url = base_url.rstrip("/")

    @property
    def url(self) -> str:
        """The `/v1` base URL to give the gateway as GATEWAY_UPSTREAM_BASE_URL."""
        return f"{self.base_url}/v1"

    def script(
        self,
        turn: dict[str, Any],
        after_tools: dict[str, Any] | list[dict[str, Any]] | None = None,
    ) -> str:
        """Register a script under a fresh key; the marker to put in a user message."""
        key = secrets.token_hex(8)
        script = {"key": key, "turn": turn, "after_tools": after_tools}
        httpx.post(f"{self.base_url}/scripts", json=script, timeout=10).raise_for_status()
        return f"[[script:{key}]]"

    def requests(self, marker_or_key: str) -> list[dict[str, Any]]:
        """The request bodies received for a script, in order."""
        found = MARKER.search(marker_or_key)
        key = found.group(1) if found else marker_or_key
        response = httpx.get(f"{self.base_url}/requests/{key}", timeout=10)
        response.raise_for_status()
        received: list[dict[str, Any]] = response.json()["requests"]
        return received
