"""The approvals API over HTTP: its calls, its live feed, and its failures as errors.

    CliError          a failure reported as one line on stderr, exit status 1
    ├── Unreachable   the gateway did not answer
    └── ApiError      the gateway answered with an error body

The key is sent only as `Authorization: Bearer <key>` (no key: an open gateway).
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any
from urllib.parse import quote

import httpx

Json = dict[str, Any]

TIMEOUT_S = 30.0
FEED_IDLE_S = 60.0
"""Re-attach when the feed sends nothing, not even a heartbeat, for this long."""
RECONNECT_S = (0.25, 0.5, 1.0, 2.0)
"""Waits before successive re-attach attempts; the last one repeats."""


class CliError(Exception):
    """A failure reported as one line on stderr, with exit status 1."""


class Unreachable(CliError):
    """The gateway did not answer: connection refused, timed out or broken."""


class ApiError(CliError):
    """The gateway answered with an error body (`{"error": {message, param, code}}`)."""

    def __init__(self, status: int, code: str, message: str, param: str | None) -> None:
        super().__init__(message)
        self.status = status
        self.code = code
        self.message = message
        self.param = param


@dataclass(frozen=True)
class FeedEvent:
    """One event of the approvals feed: an audit entry, or `ready` (where the feed starts)."""

    id: str
    kind: str
    entry: Json


class Gateway:
    """The approvals API at `url`; its failures raised as `ApiError` or `Unreachable`."""

    def __init__(self, url: str, key: str) -> None:
        self.url = url.rstrip("/")
        self.key = key
        headers = {"Authorization": f"Bearer {key}"} if key else {}
        self._http = httpx.Client(base_url=self.url, headers=headers, timeout=TIMEOUT_S)

    def close(self) -> None:
        self._http.close()

    def pending(self) -> Json:
        """`GET /v1/approvals`: the list body, soonest deadline first."""
        return self._call("GET", "/v1/approvals", params={"limit": 1000})

    def session(self, session_id: str) -> Json:
        return self._call("GET", _session_path(session_id))

    def decide(self, session_id: str, body: Json) -> Json:
        """Post a decision; returns the session after it."""
        return self._call("POST", f"{_session_path(session_id)}/decision", json=body)

    @contextmanager
    def feed(self, last_event_id: str) -> Iterator[Iterator[FeedEvent]]:
        """The live feed's events, from just after `last_event_id` when one is given."""
        headers = {"Accept": "text/event-stream"}
        if last_event_id:
            headers["Last-Event-ID"] = last_event_id
        timeout = httpx.Timeout(TIMEOUT_S, read=FEED_IDLE_S)
        with (
            self._translated(),
            self._http.stream(
                "GET", "/v1/approvals/events", headers=headers, timeout=timeout
            ) as response,
        ):
            _raise_for(response)
            yield _sse_events(response.iter_lines())

    def _call(self, method: str, path: str, **options: Any) -> Json:
        with self._translated():
            response = self._http.request(method, path, **options)
        _raise_for(response)
        body: Json = response.json()
        return body

    @contextmanager
    def _translated(self) -> Iterator[None]:
        try:
            yield
        except httpx.ConnectError as error:
            raise Unreachable(
                f"cannot reach the gateway at {self.url} ({error}); "
                "is it running? (set --url or GATEWAY_URL)"
            ) from error
        except httpx.TransportError as error:
            raise Unreachable(f"lost the gateway at {self.url}: {error!r}") from error


def _session_path(session_id: str) -> str:
    return f"/v1/approvals/{quote(session_id, safe='')}"


def _raise_for(response: httpx.Response) -> None:
    if response.is_success:
        return
    response.read()
    try:
        error = response.json()["error"]
        code, message, param = str(error["code"]), str(error["message"]), error.get("param")
    except (ValueError, KeyError, TypeError):
        code, message, param = "", response.text[:200] or response.reason_phrase, None
    raise ApiError(response.status_code, code, message, param)


def _sse_events(lines: Iterator[str]) -> Iterator[FeedEvent]:
    """Server-sent events from a body's lines; comments (heartbeats) are skipped."""
    fields: dict[str, str] = {}
    for line in lines:
        if not line:
            if "data" in fields:
                entry = json.loads(fields["data"])
                yield FeedEvent(fields.get("id", ""), fields.get("event", "message"), entry)
            fields = {}
        elif not line.startswith(":"):
            name, _, value = line.partition(":")
            value = value.removeprefix(" ")
            more_data = name == "data" and name in fields
            fields[name] = f"{fields[name]}\n{value}" if more_data else value
