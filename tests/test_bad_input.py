"""Bad input gets a clear 4xx JSON error and changes nothing."""

from __future__ import annotations

import httpx
import pytest

from tests.conftest import Replica, StackFactory


@pytest.mark.parametrize(
    ("content", "code", "mentions"),
    [
        (b"{not json", "invalid_request", "not valid JSON"),
        (b'{"model": "m"}', "invalid_request", "messages"),
        (b'{"messages": []}', "invalid_request", "messages"),
        (b'{"messages": [{"role": "wizard", "content": "x"}]}', "invalid_request", "role"),
        (b'{"messages": [{"role": "user", "content": "x"}], "n": 3}', "invalid_request", "n"),
        (b'{"messages": [{"role": "user", "content": "x"}], "temperature": 9}', "invalid_request",
         "temperature"),
        (b"[1, 2]", "invalid_request", "body"),
    ],
)  # fmt: skip
def test_malformed_chat_requests_are_400_with_a_named_problem(
    gateway: Replica, content: bytes, code: str, mentions: str
) -> None:
    response = httpx.post(
        f"{gateway.url}/v1/chat/completions",
        content=content,
        headers={"content-type": "application/json"},
    )
    assert response.status_code == 400
    error = response.json()["error"]
    assert error["code"] == code and mentions in error["message"]


def test_client_tool_named_like_a_server_tool_is_refused(gateway: Replica) -> None:
    tool = {"type": "function", "function": {"name": "getStringLength", "parameters": {}}}
    body = {"messages": [{"role": "user", "content": "x"}], "tools": [tool]}
    response = httpx.post(f"{gateway.url}/v1/chat/completions", json=body)
    assert response.status_code == 400
    assert "getStringLength" in response.json()["error"]["message"]


def test_oversized_body_is_413_whether_declared_or_streamed(make_stack: StackFactory) -> None:
    replica = make_stack(max_body_bytes="2048").replicas[0]
    big = b'{"messages": [{"role": "user", "content": "' + b"x" * 4096 + b'"}]}'
    declared = httpx.post(f"{replica.url}/v1/chat/completions", content=big)

    def chunks() -> object:
        yield big[:1000]
        yield big[1000:]

    streamed = httpx.post(f"{replica.url}/v1/chat/completions", content=chunks())  # type: ignore[arg-type]
    for response in (declared, streamed):
        assert response.status_code == 413
        assert response.json()["error"]["code"] == "body_too_large"


def test_too_many_messages_is_400(make_stack: StackFactory) -> None:
    replica = make_stack(max_messages="2").replicas[0]
    body = {"messages": [{"role": "user", "content": "x"}] * 3}
    response = httpx.post(f"{replica.url}/v1/chat/completions", json=body)
    assert response.status_code == 400
    assert "at most 2" in response.json()["error"]["message"]


def test_unknown_routes_and_methods_are_json_errors(gateway: Replica) -> None:
    missing = httpx.get(f"{gateway.url}/v1/nothing-here")
    assert missing.status_code == 404 and missing.json()["error"]["code"] == "not_found"
    wrong = httpx.get(f"{gateway.url}/v1/chat/completions")
    assert wrong.status_code == 405 and wrong.json()["error"]["code"] == "method_not_allowed"


def test_listing_other_statuses_is_refused(gateway: Replica) -> None:
    response = httpx.get(f"{gateway.url}/v1/approvals", params={"status": "approved"})
    assert response.status_code == 400
    assert "status" in response.json()["error"]["message"]
