"""The first version's protocol, exactly as its clients use it, with sessions in Redis."""

from __future__ import annotations

from typing import Any

import httpx
import pytest

from tests.clients import sse_data
from tests.conftest import Replica, StackFactory

CHAT = {
    "messages": [{"role": "user", "content": "use getStringLength on 'hello'"}],
    "model": "",
    "temperature": 0,
    "max_tokens": 200,
}


def post_stream(url: str, body: dict[str, Any]) -> list[Any]:
    with httpx.stream("POST", url, json=body, timeout=30) as response:
        assert response.status_code == 200
        assert response.headers["content-type"].startswith("text/event-stream")
        return sse_data(response.iter_lines())


def test_health_answers_healthy(gateway: Replica) -> None:
    assert httpx.get(f"{gateway.url}/health").json() == {"status": "healthy"}


def test_plain_chat_streams_content_then_done(gateway: Replica) -> None:
    body = {**CHAT, "messages": [{"role": "user", "content": "hi there"}]}
    events = post_stream(f"{gateway.url}/v1/chat/completion", body)
    assert events[-1] == "[DONE]"
    assert {e["type"] for e in events[:-1]} == {"content"}
    text = "".join(e["content"] for e in events[:-1])
    assert text.startswith("Offline model reply to: hi there")


def test_approval_required_then_approve_streams_the_tool_and_answer(gateway: Replica) -> None:
    events = post_stream(f"{gateway.url}/v1/chat/completion", CHAT)
    assert events[-1] == "[DONE]"
    required = events[-2]
    assert required["type"] == "approvalRequired"
    assert set(required) == {"type", "sessionId", "toolCalls"}
    [call] = required["toolCalls"]
    assert set(call) == {"id", "name", "arguments"}
    assert call["name"] == "getStringLength" and call["arguments"] == {"text": "hello"}

    approve = {"sessionid": required["sessionId"], "approved": True}
    events = post_stream(f"{gateway.url}/v1/chat/approve", approve)
    assert events[0] == {
        "type": "toolExecuting",
        "tool": "getStringLength",
        "arguments": {"text": "hello"},
    }
    assert events[1] == {"type": "toolResult", "tool": "getStringLength", "result": "5"}
    assert "".join(e["content"] for e in events[2:-1]) == "getStringLength returned 5."
    assert events[-1] == "[DONE]"


def test_reject_skips_the_tool_and_the_model_answers(gateway: Replica) -> None:
    required = post_stream(f"{gateway.url}/v1/chat/completion", CHAT)[-2]
    events = post_stream(
        f"{gateway.url}/v1/chat/approve", {"sessionid": required["sessionId"], "approved": False}
    )
    assert {e["type"] for e in events[:-1]} == {"content"}
    assert "rejected" in "".join(e["content"] for e in events[:-1])


def test_approve_on_another_replica_continues_the_session(make_stack: StackFactory) -> None:
    first, second = make_stack(replicas=2).replicas
    required = post_stream(f"{first.url}/v1/chat/completion", CHAT)[-2]
    events = post_stream(
        f"{second.url}/v1/chat/approve", {"sessionid": required["sessionId"], "approved": True}
    )
    assert {"type": "toolResult", "tool": "getStringLength", "result": "5"} in events


def test_approving_a_finished_session_again_is_an_error(gateway: Replica) -> None:
    required = post_stream(f"{gateway.url}/v1/chat/completion", CHAT)[-2]
    approve = {"sessionid": required["sessionId"], "approved": True}
    post_stream(f"{gateway.url}/v1/chat/approve", approve)
    # The same decision is a repeat, but the continuation already ran: reported in the stream.
    events = post_stream(f"{gateway.url}/v1/chat/approve", approve)
    assert events[0]["type"] == "error" and "completed" in events[0]["error"]
    conflicting = httpx.post(
        f"{gateway.url}/v1/chat/approve", json={**approve, "approved": False}, timeout=30
    )
    assert conflicting.status_code == 409
    assert conflicting.json()["type"] == "error"


@pytest.mark.parametrize(
    ("body", "status"),
    [
        ({"sessionid": "as_unknown", "approved": True}, 404),
        ({"sessionid": "x"}, 400),
        ({"approved": True}, 400),
    ],
)
def test_bad_approvals_get_error_bodies(
    gateway: Replica, body: dict[str, Any], status: int
) -> None:
    response = httpx.post(f"{gateway.url}/v1/chat/approve", json=body, timeout=30)
    assert response.status_code == status
    assert response.json()["type"] == "error" and response.json()["error"]
