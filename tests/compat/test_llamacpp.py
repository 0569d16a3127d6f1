"""The approval flows through the gateway with llama.cpp's server (llama-cpp-python, chat
format chatml-function-calling) serving SmolLM2-135M-Instruct as the upstream model.

What that server needs, each a per-upstream setting (docs/compat.md has the transcripts):
`tool_choice: "auto"` sent explicitly (it reads a missing one as "none" and the model never
sees the tools), `""` as the content of an assistant tool-call message (it answers null and a
missing content with HTTP 500), and a non-streamed retry when it will not stream a tool call
(HTTP 200 with an empty body).
"""

from __future__ import annotations

import os
import threading
from typing import Any

import httpx
import pytest
from openai.types.chat import ChatCompletionMessageParam

from compat.llama import MODEL_ALIAS
from compat.record import PROMPT, SAMPLING, SYSTEM_PROMPT
from tests.clients import StreamResult, consume, decide, sdk, sse_data
from tests.conftest import Replica, StackFactory

pytestmark = pytest.mark.compat

LLAMA_URL = os.environ.get("COMPAT_LLAMA_URL", "")
MESSAGES: list[ChatCompletionMessageParam] = [
    # A system message (the only place the server's template lists tools), and a prompt
    # without quotes (it HTML-escapes them, and the model copies `&#39;` into arguments).
    {"role": "system", "content": SYSTEM_PROMPT},
    {"role": "user", "content": PROMPT},
]
LLAMA_SETTINGS = {
    "upstream_model": MODEL_ALIAS,
    "upstream_tool_choice": "auto",
    "upstream_assistant_content": "empty",
    "upstream_stream_tools": "auto",
    "tools": "examples.tools:TOOLS",
    "tool_policy": '{"getStringLength": "ask"}',
    # The template drops tool results, and with tools offered a text answer comes out empty:
    # one tool round, then a turn without tools, so the model answers in words.
    "max_tool_rounds": "1",
}
ENDINGS = {"stop", "length"}
"""How the model's last turn may end: it may run out of `max_tokens`."""


@pytest.fixture
def gateway(make_stack: StackFactory) -> Replica:
    """A replica and a worker in front of the llama.cpp server."""
    return make_stack(upstream=f"{LLAMA_URL}/v1", **LLAMA_SETTINGS).replicas[0]


def only_approval(seen: StreamResult) -> dict[str, Any]:
    """The one approval notice of a stream (failing with what the model said instead)."""
    assert len(seen.approvals) == 1, f"{len(seen.approvals)} approvals; text: {seen.text!r:.300}"
    return seen.approvals[0]


def stored(gateway: Replica, session_id: str) -> dict[str, Any]:
    session: dict[str, Any] = httpx.get(f"{gateway.url}/v1/approvals/{session_id}").json()
    return session


def test_streamed_approve_runs_the_tool_and_the_model_answers(gateway: Replica) -> None:
    def approve(approval: dict[str, Any]) -> None:
        assert decide(gateway.url, approval["id"], "approve").status_code == 200

    stream = sdk(gateway.url).chat.completions.create(
        model=MODEL_ALIAS, messages=MESSAGES, stream=True, **SAMPLING
    )
    seen = consume(stream, on_approval=approve)

    notice = only_approval(seen)
    [call] = notice["tool_calls"]
    assert call["name"] == "getStringLength" and call["arguments"] == {"text": "hello"}
    assert [e["type"] for e in seen.tool_events] == ["executing", "result"]
    assert seen.events_of("result")[0]["content"] == "5"
    assert seen.text.strip(), "the model's answer after the tool is empty"
    assert seen.finish_reason in ENDINGS
    session = stored(gateway, notice["id"])
    assert session["status"] == "completed"
    assert session["tool_calls"][0]["status"] == "succeeded"


def test_streamed_reject_never_runs_the_tool_and_the_model_answers(gateway: Replica) -> None:
    def reject(approval: dict[str, Any]) -> None:
        assert decide(gateway.url, approval["id"], "reject", "not today").status_code == 200

    stream = sdk(gateway.url).chat.completions.create(
        model=MODEL_ALIAS, messages=MESSAGES, stream=True, **SAMPLING
    )
    seen = consume(stream, on_approval=reject)

    notice = only_approval(seen)
    [rejected] = seen.tool_events
    assert rejected["type"] == "rejected" and rejected["reason"] == "not today"
    assert seen.text.strip(), "the model's answer after the rejection is empty"
    assert seen.finish_reason in ENDINGS
    session = stored(gateway, notice["id"])
    assert session["tool_calls"][0]["status"] == "rejected"
    assert session["tool_calls"][0]["result"] is None


class DecideWhenPending:
    """Decides the first pending approval as soon as it appears, from another thread, while
    a non-streamed request (which returns only once its approval is decided) waits."""

    def __init__(self, gateway: Replica, decision: str) -> None:
        self.gateway = gateway
        self.decision = decision
        self.decided: dict[str, Any] = {}
        """The session as the decision left it; empty while none was pending."""
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def __enter__(self) -> DecideWhenPending:
        self._thread.start()
        return self

    def __exit__(self, *exc_info: object) -> None:
        self._stop.set()
        self._thread.join(5)

    def _run(self) -> None:
        while not self._stop.wait(0.1):
            pending = httpx.get(f"{self.gateway.url}/v1/approvals").json()["data"]
            if pending:
                response = decide(self.gateway.url, pending[0]["id"], self.decision, "no")
                self.decided = response.json()
                return


def test_non_streamed_approve_waits_for_the_decision(gateway: Replica) -> None:
    with DecideWhenPending(gateway, "approve") as approver:
        completion = sdk(gateway.url).chat.completions.create(
            model=MODEL_ALIAS, messages=MESSAGES, **SAMPLING
        )
    answer = completion.choices[0].message.content
    assert approver.decided.get("status") == "approved", f"no approval; answer: {answer!r:.300}"

    choice = completion.choices[0]
    assert choice.finish_reason in ENDINGS
    assert (choice.message.content or "").strip(), "the model's answer after the tool is empty"
    approval = (completion.model_extra or {})["approval"]
    assert approval["status"] == "completed"
    [call] = approval["tool_calls"]
    assert call["name"] == "getStringLength" and call["arguments"] == {"text": "hello"}
    assert call["status"] == "succeeded"


def test_non_streamed_reject_never_runs_the_tool(gateway: Replica) -> None:
    with DecideWhenPending(gateway, "reject") as approver:
        completion = sdk(gateway.url).chat.completions.create(
            model=MODEL_ALIAS, messages=MESSAGES, **SAMPLING
        )
    answer = completion.choices[0].message.content
    assert approver.decided.get("status") == "rejected", f"no approval; answer: {answer!r:.300}"

    assert completion.choices[0].finish_reason in ENDINGS
    approval = (completion.model_extra or {})["approval"]
    assert approval["tool_calls"][0]["status"] == "rejected"
    assert approval["tool_calls"][0]["result"] is None


def legacy_stream(url: str, body: dict[str, Any]) -> list[Any]:
    with httpx.stream("POST", url, json=body, timeout=120) as response:
        assert response.status_code == 200
        return sse_data(response.iter_lines())


def legacy_text(events: list[Any]) -> str:
    """What the model said, or the stream's error, for a failure message."""
    said = "".join(e.get("content", "") for e in events if isinstance(e, dict))
    errors = [e["error"] for e in events if isinstance(e, dict) and e.get("type") == "error"]
    return f"said {said!r:.300}, errors {errors}"


LEGACY_CHAT = {"messages": MESSAGES, "model": "", "temperature": 0, "max_tokens": 64}
"""The first version's request has no seed."""


def test_first_version_client_approves_and_gets_the_result(gateway: Replica) -> None:
    events = legacy_stream(f"{gateway.url}/v1/chat/completion", LEGACY_CHAT)
    assert events[-1] == "[DONE]"
    required = events[-2]
    assert required["type"] == "approvalRequired", legacy_text(events)
    [call] = required["toolCalls"]
    assert call["name"] == "getStringLength" and call["arguments"] == {"text": "hello"}

    approve = {"sessionid": required["sessionId"], "approved": True}
    events = legacy_stream(f"{gateway.url}/v1/chat/approve", approve)
    assert events[0] == {
        "type": "toolExecuting",
        "tool": "getStringLength",
        "arguments": {"text": "hello"},
    }
    assert events[1] == {"type": "toolResult", "tool": "getStringLength", "result": "5"}
    assert {e["type"] for e in events[2:-1]} == {"content"}, events
    assert "".join(e["content"] for e in events[2:-1]).strip()
    assert events[-1] == "[DONE]"


def test_first_version_client_rejects_and_the_model_answers(gateway: Replica) -> None:
    events = legacy_stream(f"{gateway.url}/v1/chat/completion", LEGACY_CHAT)
    required = events[-2]
    assert required["type"] == "approvalRequired", legacy_text(events)

    reject = {"sessionid": required["sessionId"], "approved": False}
    events = legacy_stream(f"{gateway.url}/v1/chat/approve", reject)
    assert {e["type"] for e in events[:-1]} == {"content"}, events
    assert "".join(e["content"] for e in events[:-1]).strip()
    assert events[-1] == "[DONE]"
