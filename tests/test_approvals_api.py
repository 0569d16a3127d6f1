"""The approvals API: listing, reading, and the decide contract (200 / repeat / 409 / 410 / 404)."""

from __future__ import annotations

import concurrent.futures
import time
from collections.abc import Iterator
from typing import Any

import httpx
import pytest

from tests.clients import decide, open_pending
from tests.conftest import Replica, StackFactory
from tests.mediation import wait_for


def test_pending_sessions_are_listed_and_readable(gateway: Replica) -> None:
    session = open_pending(gateway)
    listed = httpx.get(f"{gateway.url}/v1/approvals", params={"status": "pending"}).json()
    assert listed["object"] == "list"
    assert session["id"] in {s["id"] for s in listed["data"]}
    assert session["status"] == "pending" and session["object"] == "approval_session"
    [call] = session["tool_calls"]
    assert call["status"] == "pending" and call["decision"] is None
    assert session["expires_at"] - session["created_at"] == pytest.approx(600, abs=1)


def test_same_decision_twice_is_idempotent_and_a_different_one_conflicts(gateway: Replica) -> None:
    session = open_pending(gateway)
    first = decide(gateway.url, session["id"], "reject", "no")
    again = decide(gateway.url, session["id"], "reject", "no")
    assert first.status_code == again.status_code == 200
    assert first.json()["tool_calls"] == again.json()["tool_calls"]
    conflict = decide(gateway.url, session["id"], "approve")
    assert conflict.status_code == 409
    assert conflict.json()["error"]["code"] == "decision_conflict"
    assert httpx.get(f"{gateway.url}/v1/approvals/{session['id']}").json()["status"] == "rejected"
    listed = httpx.get(f"{gateway.url}/v1/approvals").json()["data"]
    assert session["id"] not in {s["id"] for s in listed}


def test_unknown_session_is_404_everywhere(gateway: Replica) -> None:
    for response in (
        httpx.get(f"{gateway.url}/v1/approvals/as_nope"),
        decide(gateway.url, "as_nope", "approve"),
    ):
        assert response.status_code == 404
        assert response.json()["error"]["code"] == "session_not_found"


def test_decision_after_the_deadline_is_410_and_the_sweeper_expires_it(
    make_stack: StackFactory,
) -> None:
    replica = make_stack(approval_timeout_s="1").replicas[0]
    session = open_pending(replica)
    # Nobody holds a first-version session: the sweeper alone moves it to expired.
    url = f"{replica.url}/v1/approvals/{session['id']}"
    assert wait_for(lambda: httpx.get(url).json()["status"] == "expired"), "not expired"
    assert time.time() >= session["expires_at"]  # not before its deadline
    late = decide(replica.url, session["id"], "approve")
    assert late.status_code == 410
    assert late.json()["error"]["code"] == "session_expired"


def test_concurrent_conflicting_decisions_have_exactly_one_winner(gateway: Replica) -> None:
    session = open_pending(gateway)
    with httpx.Client(base_url=gateway.url, timeout=30) as client:

        def post(i: int) -> tuple[str, int]:
            kind = "approve" if i % 2 else "reject"
            r = client.post(f"/v1/approvals/{session['id']}/decision", json={"decision": kind})
            return kind, r.status_code

        with concurrent.futures.ThreadPoolExecutor(8) as pool:
            outcomes = list(pool.map(post, range(20)))
    winners = {kind for kind, status in outcomes if status == 200}
    assert len(winners) == 1
    assert all(status == 409 for kind, status in outcomes if kind not in winners)
    stored = httpx.get(f"{gateway.url}/v1/approvals/{session['id']}").json()
    assert stored["tool_calls"][0]["decision"]["decision"] == winners.pop()


@pytest.fixture
def client(gateway: Replica) -> Iterator[httpx.Client]:
    with gateway.client() as c:
        yield c


@pytest.mark.parametrize(
    ("body", "where"),
    [
        ({"decision": "maybe"}, "decision"),
        ({}, "decision"),
        ({"decision": "approve", "surprise": 1}, "surprise"),
        ({"decision": "reject", "reason": "x" * 3000}, "reason"),
    ],
)
def test_bad_decisions_are_400_naming_the_field(
    client: httpx.Client, gateway: Replica, body: dict[str, Any], where: str
) -> None:
    session = open_pending(gateway)
    response = client.post(f"/v1/approvals/{session['id']}/decision", json=body)
    assert response.status_code == 400
    assert response.json()["error"]["code"] == "invalid_request"
    assert where in response.json()["error"]["message"]
    assert client.get(f"/v1/approvals/{session['id']}").json()["status"] == "pending"
