"""Client-side helpers: the official `openai` SDK pointed at a replica, and stream readers."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import httpx
import openai
import orjson
from openai import Stream
from openai.types.chat import ChatCompletionChunk, ChatCompletionMessageParam

if TYPE_CHECKING:
    from tests.conftest import Replica


def sdk(
    base_url: str, api_key: str = "unused", headers: dict[str, str] | None = None
) -> openai.OpenAI:
    return openai.OpenAI(
        base_url=f"{base_url}/v1",
        api_key=api_key,
        max_retries=0,
        timeout=60,
        default_headers=headers,
    )


def user(text: str) -> list[ChatCompletionMessageParam]:
    return [{"role": "user", "content": text}]


def stream_chat(
    base_url: str,
    prompt: str,
    api_key: str = "unused",
    headers: dict[str, str] | None = None,
    **options: Any,
) -> Stream[ChatCompletionChunk]:
    """A streamed completion through the official SDK."""
    client = sdk(base_url, api_key, headers)
    stream: Stream[ChatCompletionChunk] = client.chat.completions.create(
        model="offline-model", messages=user(prompt), stream=True, **options
    )
    return stream


@dataclass
class StreamResult:
    """What a client saw on one streamed completion."""

    text: str = ""
    approvals: list[dict[str, Any]] = field(default_factory=list)
    tool_events: list[dict[str, Any]] = field(default_factory=list)
    tool_calls: list[Any] = field(default_factory=list)
    finish_reason: str | None = None
    usage: Any = None
    received_at: list[float] = field(default_factory=list)
    """Wall-clock time each approval notice arrived."""

    def events_of(self, kind: str) -> list[dict[str, Any]]:
        return [e for e in self.tool_events if e["type"] == kind]


def consume(
    chunks: Iterable[ChatCompletionChunk],
    on_approval: Callable[[dict[str, Any]], object] | None = None,
) -> StreamResult:
    """Read an SDK stream to its end, calling `on_approval` at each pending notice."""
    seen = StreamResult()
    for chunk in chunks:
        extra = chunk.model_extra or {}
        if "approval" in extra:
            seen.approvals.append(extra["approval"])
            seen.received_at.append(time.time())
            if on_approval is not None and extra["approval"]["status"] == "pending":
                on_approval(extra["approval"])
        if "tool_event" in extra:
            seen.tool_events.append(extra["tool_event"])
        if chunk.usage is not None:
            seen.usage = chunk.usage
        for choice in chunk.choices:
            seen.text += choice.delta.content or ""
            seen.tool_calls += choice.delta.tool_calls or []
            seen.finish_reason = choice.finish_reason or seen.finish_reason
    return seen


def decide(
    base_url: str, session_id: str, decision: str, reason: str = "", key: str | None = None
) -> httpx.Response:
    return httpx.post(
        f"{base_url}/v1/approvals/{session_id}/decision",
        json={"decision": decision, "reason": reason},
        headers=bearer(key),
        timeout=30,
    )


def decide_calls(
    base_url: str, session_id: str, calls: list[dict[str, Any]], key: str | None = None
) -> httpx.Response:
    """A per-call decision: `calls` are `{"tool_call_id", "decision", ...}` items."""
    return httpx.post(
        f"{base_url}/v1/approvals/{session_id}/decision",
        json={"calls": calls},
        headers=bearer(key),
        timeout=30,
    )


def bearer(key: str | None) -> dict[str, str]:
    return {"Authorization": f"Bearer {key}"} if key else {}


def sse_data(lines: Iterable[str]) -> list[Any]:
    """The `data:` payloads of an SSE body, `[DONE]` kept as the string."""
    payloads: list[Any] = []
    for line in lines:
        if line.startswith("data: "):
            raw = line[len("data: ") :]
            payloads.append(raw if raw == "[DONE]" else orjson.loads(raw))
    return payloads


def read_events(lines: Iterable[str], until_approval: bool = False) -> list[tuple[str, Any]]:
    """(id, payload) of each `data:` event; stops after the pending approval notice if asked."""
    events: list[tuple[str, Any]] = []
    event_id = ""
    for line in lines:
        if line.startswith("id: "):
            event_id = line[len("id: ") :]
        elif line.startswith("data: "):
            payload = sse_data([line])[0]
            events.append((event_id, payload))
            event_id = ""
            if until_approval and isinstance(payload, dict) and "approval" in payload:
                break
    return events


def hold(url: str, prompt: str) -> tuple[str, int]:
    """Open a streamed chat, read to its approval notice, hang up: (session id, notice id)."""
    body = {"model": "m", "stream": True, "messages": user(prompt)}
    with httpx.stream("POST", f"{url}/v1/chat/completions", json=body, timeout=30) as r:
        events = read_events(r.iter_lines(), until_approval=True)
    notice_id, notice = events[-1]
    return notice["approval"]["id"], int(notice_id)


def reattach(url: str, session_id: str, last_event_id: int) -> list[tuple[str, Any]]:
    """Re-attach to a session's run after `last_event_id` and read it to its end."""
    headers = {"Last-Event-ID": str(last_event_id)}
    with httpx.stream(
        "GET", f"{url}/v1/approvals/{session_id}/stream", headers=headers, timeout=60
    ) as response:
        assert response.status_code == 200, response.read()
        return read_events(response.iter_lines())


def text_of(events: list[tuple[str, Any]]) -> str:
    """The answer's text in `read_events` output."""
    return "".join(
        p["choices"][0]["delta"].get("content") or ""
        for _id, p in events
        if isinstance(p, dict) and p.get("choices")
    )


def open_pending(replica: Replica, prompt: str = "getStringLength of 'abc'") -> dict[str, Any]:
    """Start a first-version chat (it does not hold the stream) and return its pending session."""
    body = {"messages": user(prompt), "model": ""}
    with httpx.stream("POST", f"{replica.url}/v1/chat/completion", json=body, timeout=30) as r:
        events = sse_data(r.iter_lines())
    [notice] = [e for e in events if isinstance(e, dict) and e["type"] == "approvalRequired"]
    session: dict[str, Any] = httpx.get(f"{replica.url}/v1/approvals/{notice['sessionId']}").json()
    return session


class HeldStream:
    """A streamed completion read in a background thread, so a test can act while it is held."""

    def __init__(
        self,
        base_url: str,
        prompt: str,
        api_key: str = "unused",
        headers: dict[str, str] | None = None,
    ) -> None:
        self.api_key = api_key
        self.headers = headers
        self.pending = threading.Event()
        self.approval: dict[str, Any] = {}
        self.result: StreamResult | None = None
        self.error: BaseException | None = None
        self.finished_at = 0.0
        self._thread = threading.Thread(target=self._read, args=(base_url, prompt), daemon=True)
        self._thread.start()

    def _read(self, base_url: str, prompt: str) -> None:
        def held(approval: dict[str, Any]) -> None:
            self.approval = approval
            self.pending.set()

        try:
            chunks = stream_chat(base_url, prompt, self.api_key, self.headers)
            self.result = consume(chunks, on_approval=held)
        except BaseException as error:  # reported to the test by wait()
            self.error = error
        self.finished_at = time.monotonic()

    def wait_pending(self, timeout: float = 20) -> dict[str, Any]:
        assert self.pending.wait(timeout), f"no approval notice (error: {self.error!r})"
        return self.approval

    def wait(self, timeout: float = 30) -> StreamResult:
        self._thread.join(timeout)
        assert not self._thread.is_alive(), "the stream did not finish"
        if self.error is not None:
            raise self.error
        assert self.result is not None
        return self.result
