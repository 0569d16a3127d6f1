"""Pending sessions live in Redis: they outlive the replica process and the client connection."""

from __future__ import annotations

import time

import httpx
import redis

from tests.clients import decide, sse_data, user
from tests.conftest import StackFactory
from tests.test_approvals_api import open_pending


def test_pending_session_survives_a_gateway_restart(make_stack: StackFactory) -> None:
    replica = make_stack().replicas[0]
    session = open_pending(replica, "getStringLength of 'restart'")
    replica.restart()
    listed = httpx.get(f"{replica.url}/v1/approvals").json()["data"]
    assert session["id"] in {s["id"] for s in listed}
    with httpx.stream(
        "POST",
        f"{replica.url}/v1/chat/approve",
        json={"sessionid": session["id"], "approved": True},
        timeout=30,
    ) as response:
        events = sse_data(response.iter_lines())
    assert {"type": "toolResult", "tool": "getStringLength", "result": "7"} in events


def test_client_disconnect_leaves_the_session_pending_and_frees_the_connection(
    make_stack: StackFactory,
) -> None:
    stack = make_stack()
    replica = stack.replicas[0]
    redis_client = stack.redis.client()
    body = {"model": "m", "stream": True, "messages": user("getStringLength of 'gone'")}
    with httpx.stream("POST", f"{replica.url}/v1/chat/completions", json=body, timeout=30) as r:
        for line in r.iter_lines():
            if '"approval"' in line:
                session_id = sse_data([line])[0]["approval"]["id"]
                break
    # The client is gone; the replica notices and lets go of the stream.
    deadline = time.monotonic() + 10
    while httpx.get(f"{replica.url}/readyz").json()["held_streams"] and time.monotonic() < deadline:
        time.sleep(0.05)
    assert httpx.get(f"{replica.url}/readyz").json()["held_streams"] == 0
    assert httpx.get(f"{replica.url}/v1/approvals/{session_id}").json()["status"] == "pending"
    channel = f"{stack.prefix}:wake:{{{session_id}}}"
    assert _subscribers(redis_client, channel) == 0
    # The decision is still accepted and stored.
    assert decide(replica.url, session_id, "approve").status_code == 200
    assert httpx.get(f"{replica.url}/v1/approvals/{session_id}").json()["status"] == "approved"


def _subscribers(client: redis.Redis, channel: str) -> int:
    counts = client.pubsub_numsub(channel)
    return int(counts[0][1])
