"""Pending sessions live in Redis: they outlive the replica process and the client connection."""

from __future__ import annotations

import time

import httpx

from tests.clients import decide, hold, open_pending, reattach, sse_data, text_of
from tests.conftest import StackFactory


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


def test_client_disconnect_leaves_the_session_pending_and_the_run_going(
    make_stack: StackFactory,
) -> None:
    replica = make_stack().replicas[0]
    session_id, notice_id = hold(replica.url, "getStringLength of 'gone'")
    # The client is gone; the replica lets go of its response but not of the run.
    deadline = time.monotonic() + 10
    while httpx.get(f"{replica.url}/readyz").json()["held_streams"] and time.monotonic() < deadline:
        time.sleep(0.05)
    assert httpx.get(f"{replica.url}/readyz").json()["held_streams"] == 0
    assert httpx.get(f"{replica.url}/v1/approvals/{session_id}").json()["status"] == "pending"
    # The decision is accepted, the tool runs with nobody listening, and the answer waits
    # in the run's log for the client to come back.
    assert decide(replica.url, session_id, "approve").status_code == 200
    deadline = time.monotonic() + 10
    status = ""
    while status != "completed" and time.monotonic() < deadline:
        status = httpx.get(f"{replica.url}/v1/approvals/{session_id}").json()["status"]
        time.sleep(0.05)
    assert status == "completed"
    rest = reattach(replica.url, session_id, notice_id)
    assert text_of(rest) == "getStringLength returned 4."
    assert rest[-1][1] == "[DONE]"
