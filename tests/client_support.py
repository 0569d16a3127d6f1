"""Client libraries people use, each run against a gateway as its own user would run it.

Every client sends `X-Conversation-Id: <label>` (a label of the test's choosing), so the
test finds its approval with `GET /v1/approvals?conversation=<label>` whether or not the
library shows the stream's extra fields; what the library finally handed its caller is an
`Outcome`.
"""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Generic, TypeVar

import httpx
import openai
import orjson
from langchain_openai import ChatOpenAI
from openai.types.chat import ChatCompletion, ChatCompletionChunk
from pydantic import SecretStr

from tests.clients import StreamResult, consume, decide, sse_data, user

MODEL = "offline-model"
PROMPT = "use getStringLength on 'hello'"
LABEL_HEADER = "X-Conversation-Id"


@dataclass(frozen=True)
class Target:
    """Where a client sends its request, and the conversation label it sends."""

    base_url: str
    label: str
    workdir: Path


@dataclass
class Outcome:
    """What a client library finally gave its caller."""

    text: str
    tool_events: list[dict[str, Any]] | None = None
    """The `tool_event` extras, where the library shows them (None where it hides them)."""
    approvals: list[dict[str, Any]] | None = None
    """The `approval` extras, where the library shows them."""
    heartbeats: int | None = None
    """The SSE comment lines received, where the client shows them."""


Client = Callable[[Target], Outcome]


def openai_sdk(target: Target, **options: Any) -> openai.OpenAI:
    """The official SDK as a user builds it: its own timeout and retries unless given."""
    return openai.OpenAI(
        base_url=f"{target.base_url}/v1",
        api_key="unused",
        default_headers={LABEL_HEADER: target.label},
        **options,
    )


def _streamed(seen: StreamResult) -> Outcome:
    return Outcome(seen.text, seen.tool_events, seen.approvals)


def httpx_sse(target: Target) -> Outcome:
    """The raw stream, read line by line as a hand-written client does."""
    body = {"model": MODEL, "stream": True, "messages": user(PROMPT)}
    url = f"{target.base_url}/v1/chat/completions"
    headers = {LABEL_HEADER: target.label}
    with httpx.stream("POST", url, json=body, headers=headers, timeout=60) as response:
        response.raise_for_status()
        lines = list(response.iter_lines())
    payloads = [p for p in sse_data(lines) if p != "[DONE]"]
    seen = consume(ChatCompletionChunk.model_validate(p) for p in payloads)
    heartbeats = sum(line.startswith(":") for line in lines)
    return Outcome(seen.text, seen.tool_events, seen.approvals, heartbeats)


def sdk_sync_streamed(target: Target) -> Outcome:
    client = openai_sdk(target)
    stream = client.chat.completions.create(model=MODEL, messages=user(PROMPT), stream=True)
    return _streamed(consume(stream))


def sdk_sync_not_streamed(target: Target) -> Outcome:
    completion = openai_sdk(target).chat.completions.create(model=MODEL, messages=user(PROMPT))
    approval = (completion.model_extra or {}).get("approval")
    text = completion.choices[0].message.content or ""
    return Outcome(text, approvals=[approval] if approval is not None else [])


def sdk_async_streamed(target: Target) -> Outcome:
    async def read() -> list[ChatCompletionChunk]:
        async with openai.AsyncOpenAI(
            base_url=f"{target.base_url}/v1",
            api_key="unused",
            default_headers={LABEL_HEADER: target.label},
        ) as client:
            stream = await client.chat.completions.create(
                model=MODEL, messages=user(PROMPT), stream=True
            )
            return [chunk async for chunk in stream]

    return _streamed(consume(asyncio.run(read())))


def sdk_stream_helper(target: Target) -> Outcome:
    """`client.chat.completions.stream(...)`: the final completion it assembles."""
    chunks: list[ChatCompletionChunk] = []
    with openai_sdk(target).chat.completions.stream(model=MODEL, messages=user(PROMPT)) as stream:
        for event in stream:
            if event.type == "chunk":
                chunks.append(event.chunk)
        final = stream.get_final_completion()
    seen = consume(chunks)
    return Outcome(final.choices[0].message.content or "", seen.tool_events, seen.approvals)


def langchain_model(target: Target) -> ChatOpenAI:
    return ChatOpenAI(
        model=MODEL,
        base_url=f"{target.base_url}/v1",
        api_key=SecretStr("unused"),
        default_headers={LABEL_HEADER: target.label},
    )


def langchain_invoke(target: Target) -> Outcome:
    return Outcome(langchain_model(target).invoke(PROMPT).text)


def langchain_stream(target: Target) -> Outcome:
    return Outcome("".join(chunk.text for chunk in langchain_model(target).stream(PROMPT)))


class ClientFailed(Exception):
    """A client program exited with an error."""


def llm_cli(*options: str) -> Client:
    """The `llm` CLI with the gateway configured as an OpenAI-compatible model."""

    def run(target: Target) -> Outcome:
        user_path = target.workdir / f"llm-{target.label}"
        user_path.mkdir()
        model = {
            "model_id": "gateway",
            "model_name": MODEL,
            "api_base": f"{target.base_url}/v1",
            "headers": {LABEL_HEADER: target.label},
        }
        # JSON is YAML: llm reads this file with yaml.safe_load.
        (user_path / "extra-openai-models.yaml").write_bytes(orjson.dumps([model]))
        llm = Path(sys.executable).with_name("llm")
        completed = subprocess.run(
            [str(llm), "-m", "gateway", *options, PROMPT],
            env={**os.environ, "LLM_USER_PATH": str(user_path)},
            capture_output=True,
            text=True,
            timeout=240,
            check=False,
        )
        if completed.returncode != 0:
            raise ClientFailed(f"llm exited {completed.returncode}: {completed.stderr}")
        return Outcome(completed.stdout.strip())

    return run


def listed(base_url: str, **filters: str) -> list[dict[str, Any]]:
    """`GET /v1/approvals` with filters: the pending sessions that match."""
    response = httpx.get(f"{base_url}/v1/approvals", params=filters, timeout=10)
    response.raise_for_status()
    sessions: list[dict[str, Any]] = response.json()["data"]
    return sessions


Result = TypeVar("Result")


@dataclass(kw_only=True)
class HeldRun(Generic[Result]):
    """One client's work, run in a thread while the test plays the person deciding: find its
    approval by its label (as a client that hides extra fields does), decide after a hold."""

    target: Target
    reason: str = ""
    outcome: Result | None = None
    error: BaseException | None = None
    finished_at: float = 0.0
    listed: list[dict[str, Any]] = field(default_factory=list)
    """What `GET /v1/approvals?conversation=<label>` showed once the work was held."""
    decided_at: float = 0.0
    decision_status: int = 0
    """The HTTP status of the decision (0: none was posted)."""
    _thread: threading.Thread | None = None

    def work(self) -> Result:
        """What runs in the thread."""
        raise NotImplementedError

    def decision(self, session: dict[str, Any]) -> httpx.Response:
        """Post the person's decision on `session`."""
        raise NotImplementedError

    def start(self) -> None:
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _run(self) -> None:
        try:
            self.outcome = self.work()
        except BaseException as error:  # the test reports it
            self.error = error
        self.finished_at = time.time()

    @property
    def running(self) -> bool:
        return self._thread is not None and self._thread.is_alive()

    def find_pending(self, timeout: float = 60) -> None:
        deadline = time.monotonic() + timeout
        while not self.listed and self.running and time.monotonic() < deadline:
            self.listed = listed(self.target.base_url, conversation=self.target.label)
            time.sleep(0.2)

    def decide_after(self, hold_s: float) -> None:
        """Decide once the session has been pending `hold_s` seconds (if it was found)."""
        if len(self.listed) != 1:
            return
        session = self.listed[0]
        time.sleep(max(0.0, float(session["created_at"]) + hold_s - time.time()))
        self.decided_at = time.time()
        self.decision_status = self.decision(session).status_code

    def join(self, timeout: float) -> None:
        if self._thread is not None:
            self._thread.join(timeout)

    @property
    def held_s(self) -> float:
        """How long the session was pending before the decision."""
        return self.decided_at - float(self.listed[0]["created_at"])

    def got(self) -> Result:
        """What the work returned; fails with its own error if it raised."""
        assert not self.running, f"it did not finish: {self.target.label}"
        if self.error is not None:
            raise self.error
        assert self.outcome is not None
        return self.outcome


@dataclass(kw_only=True)
class HeldClient(HeldRun[Outcome]):
    """One client's request, decided the same way for every call."""

    client: Client
    decision_kind: str

    def work(self) -> Outcome:
        return self.client(self.target)

    def decision(self, session: dict[str, Any]) -> httpx.Response:
        return decide(self.target.base_url, session["id"], self.decision_kind, self.reason)


@dataclass
class RetriedRequest:
    """A non-streamed SDK request with a short timeout, so the SDK retries while it is held,
    and the person who approves it after `hold_s`, watching its label's pending list."""

    target: Target
    prompt: str
    headers: dict[str, str] = field(default_factory=dict)
    attempts: list[str] = field(default_factory=list)
    """The `X-Stainless-Retry-Count` of each attempt the SDK sent."""
    listings: list[list[str]] = field(default_factory=list)
    """The ids `GET /v1/approvals?conversation=<label>` showed, every half second of the hold."""
    completion: ChatCompletion | None = None
    error: BaseException | None = None
    started_at: float = 0.0
    _threads: list[threading.Thread] = field(default_factory=list)

    def start(self, hold_s: float) -> None:
        self.started_at = time.time()
        self._threads = [
            threading.Thread(target=self._send, daemon=True),
            threading.Thread(target=self._approve_after, args=(hold_s,), daemon=True),
        ]
        for thread in self._threads:
            thread.start()

    def _send(self) -> None:
        def sent(request: httpx.Request) -> None:
            self.attempts.append(request.headers.get("x-stainless-retry-count", ""))

        http_client = openai.DefaultHttpxClient(event_hooks={"request": [sent]})
        client = openai_sdk(self.target, timeout=3, max_retries=5, http_client=http_client)
        try:
            self.completion = client.chat.completions.create(
                model=MODEL, messages=user(self.prompt), extra_headers=self.headers
            )
        except BaseException as error:  # the test reports it
            self.error = error

    def _approve_after(self, hold_s: float) -> None:
        deadline = time.monotonic() + hold_s
        while time.monotonic() < deadline:
            pending = listed(self.target.base_url, conversation=self.target.label)
            self.listings.append([session["id"] for session in pending])
            time.sleep(0.5)
        for session_id in self.listings[-1]:
            decide(self.target.base_url, session_id, "approve").raise_for_status()

    def wait(self, timeout: float = 60) -> ChatCompletion:
        """The SDK's answer; fails with the SDK's own error if it raised."""
        for thread in self._threads:
            thread.join(timeout)
        if self.error is not None:
            raise self.error
        assert self.completion is not None, "the request did not finish"
        return self.completion
