"""Helpers of the complete-mediation tests: a stack behind the hostile upstream, raw streams,
the audit log and the ledger the test tools write."""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx

from tests.clients import bearer, sse_data


@dataclass
class RawStream:
    """What a client saw on one streamed completion, read without an SDK."""

    status: int
    headers: httpx.Headers
    events: list[Any] = field(default_factory=list)

    @property
    def done(self) -> bool:
        return bool(self.events) and self.events[-1] == "[DONE]"

    @property
    def chunks(self) -> list[dict[str, Any]]:
        return [e for e in self.events if isinstance(e, dict)]

    @property
    def text(self) -> str:
        return "".join(
            choice["delta"].get("content") or ""
            for chunk in self.chunks
            for choice in chunk.get("choices", ())
        )

    @property
    def approvals(self) -> list[dict[str, Any]]:
        return [c["approval"] for c in self.chunks if "approval" in c]

    @property
    def tool_events(self) -> list[dict[str, Any]]:
        return [c["tool_event"] for c in self.chunks if "tool_event" in c]

    @property
    def errors(self) -> list[dict[str, Any]]:
        return [c["error"] for c in self.chunks if "error" in c]


def raw_chat(
    base_url: str,
    prompt: str,
    key: str | None = None,
    headers: dict[str, str] | None = None,
    timeout: float = 30,
    until_approval: bool = False,
) -> RawStream:
    """A streamed chat read to its end with httpx (an SDK would raise on an error chunk), or
    `until_approval` notice (then the client goes away; the session stays pending)."""
    body = {"model": "m", "messages": [{"role": "user", "content": prompt}], "stream": True}
    with httpx.stream(
        "POST",
        f"{base_url}/v1/chat/completions",
        json=body,
        headers={**bearer(key), **(headers or {})},
        timeout=timeout,
    ) as response:
        seen = RawStream(response.status_code, response.headers)
        if response.status_code == 200:
            for line in response.iter_lines():
                seen.events += sse_data([line])
                if until_approval and seen.approvals:
                    break
        else:
            response.read()
            seen.events = [response.json()]
    return seen


def audit_events(base_url: str, session_id: str, key: str | None = None) -> list[dict[str, Any]]:
    """The audit entries of one session, in order."""
    response = httpx.get(
        f"{base_url}/v1/audit", params={"session": session_id}, headers=bearer(key), timeout=10
    )
    response.raise_for_status()
    entries: list[dict[str, Any]] = response.json()["data"]
    return entries


def wait_for(check: Any, timeout: float = 10.0) -> Any:
    """Poll `check()` until it returns something truthy (for state written by another process)."""
    deadline = time.monotonic() + timeout
    while True:
        value = check()
        if value or time.monotonic() > deadline:
            return value
        time.sleep(0.05)


def policy_file(directory: Path, text: str) -> str:
    path = directory / "policy.toml"
    path.write_text(text)
    return str(path)
