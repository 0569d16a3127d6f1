"""A retried request is the same request, down to its `X-Conversation-Id`: the answer to a
retry names the conversation the first request belongs to, so the client keeps its grants."""

from __future__ import annotations

import json
import secrets
import time
from typing import Any

import httpx

from tests.clients import decide, user
from tests.conftest import Replica, StackFactory

STRING_LENGTH_AB = "Please use getStringLength on 'ab'"


def test_a_retried_answer_names_the_first_requests_conversation(gateway: Replica) -> None:
    body = {"model": "m", "messages": user("hello retries")}
    headers = {"Idempotency-Key": f"key-{secrets.token_hex(8)}"}
    url = f"{gateway.url}/v1/chat/completions"
    first = httpx.post(url, json=body, headers=headers, timeout=30)
    again = httpx.post(url, json=body, headers=headers, timeout=30)

    assert first.status_code == again.status_code == 200
    assert again.json() == first.json()  # the stored answer, not a second one
    conversation = first.headers["x-conversation-id"]
    assert conversation.startswith("conv_")
    # Without the fix the retry minted a fresh id of its own (the client sent none).
    assert again.headers["x-conversation-id"] == conversation


def test_a_retried_stream_follows_the_held_run_in_the_same_conversation(
    make_stack: StackFactory,
) -> None:
    stack = make_stack(heartbeat_interval_s="1")
    url = f"{stack.replicas[0].url}/v1/chat/completions"
    body = {"model": "m", "stream": True, "messages": user(STRING_LENGTH_AB)}
    headers = {"Idempotency-Key": f"key-{secrets.token_hex(8)}"}
    with httpx.stream("POST", url, json=body, headers=headers, timeout=30) as first:
        conversation = first.headers["x-conversation-id"]
        approval = _first_approval(first)
    # The client lost the first stream; its retry is held as long as a person takes.
    with httpx.stream("POST", url, json=body, headers=headers, timeout=30) as retry:
        assert retry.status_code == 200
        assert retry.headers["x-conversation-id"] == conversation
        lines = retry.iter_lines()
        heartbeats, started = 0, time.monotonic()
        for line in lines:
            heartbeats += line == ": heartbeat"
            if heartbeats == 3:
                break
        assert time.monotonic() - started > 2  # held past two heartbeat intervals
        assert decide(stack.replicas[0].url, approval["id"], "approve").status_code == 200
        text = "".join(_contents(lines))
    assert text == "getStringLength returned 2."


def _first_approval(response: httpx.Response) -> dict[str, Any]:
    for line in response.iter_lines():
        if line.startswith("data: {") and '"approval"' in line:
            approval: dict[str, Any] = json.loads(line[len("data: ") :])["approval"]
            return approval
    raise AssertionError("the stream ended without an approval notice")


def _contents(lines: Any) -> list[str]:
    pieces = []
    for line in lines:
        if line == "data: [DONE]":
            break
        if line.startswith("data: {"):
            for choice in json.loads(line[len("data: ") :]).get("choices", []):
                pieces.append(choice["delta"].get("content") or "")
    return pieces
