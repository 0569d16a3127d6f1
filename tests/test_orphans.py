"""A run abandoned by its replica and its client still ends, and its webhooks still arrive."""

from __future__ import annotations

import json
import time
from collections import Counter
from typing import Any

import httpx
import pytest

from core.keys import Keys
from tests.clients import decide, hold, reattach, text_of
from tests.conftest import StackFactory
from tests.receivers import (
    SECRET,
    Receiver,
    receiver_fixture,  # noqa: F401 - the `receiver` fixture
)
from tests.redis_cluster import redis_cluster_fixture  # noqa: F401 - the `redis_cluster` fixture


def _wait_for(what: str, check: Any, timeout: float = 30) -> Any:
    deadline = time.monotonic() + timeout
    while not (found := check()):
        assert time.monotonic() < deadline, f"{what}: not within {timeout} s"
        time.sleep(0.05)
    return found


@pytest.mark.parametrize("store", ["redis", pytest.param("cluster", marks=pytest.mark.cluster)])
def test_orphaned_run_completes_and_its_webhooks_arrive_once_a_replica_is_up(
    make_stack: StackFactory, receiver: Receiver, request: pytest.FixtureRequest, store: str
) -> None:
    # The receiver is down (503) while the first replica holds the events in memory.
    receiver.answer("/hook", *[503] * 1000)
    target = {"url": f"{receiver.url}/hook", "secret": SECRET.decode()}
    cluster = request.getfixturevalue("redis_cluster") if store == "cluster" else None
    stack = make_stack(replicas=2, lease_s="1", webhooks=json.dumps([target]), redis=cluster)
    doomed, survivor = stack.replicas
    session_id, notice_id = hold(doomed.url, "getStringLength of 'orphan'")  # the client leaves
    _wait_for("a failed delivery of approval.requested", lambda: receiver.at("/hook"))
    doomed.process.kill()
    assert decide(survivor.url, session_id, "approve").status_code == 200
    # Nobody re-attaches: the survivor's sweeper adopts the run and drives it to its end.
    session = _wait_for(
        "the session completed",
        lambda: (
            (s := httpx.get(f"{survivor.url}/v1/approvals/{session_id}").json())["status"]
            == "completed"
            and s
        ),
    )
    assert [c["status"] for c in session["tool_calls"]] == ["succeeded"]
    later = reattach(survivor.url, session_id, notice_id)
    assert any(isinstance(p, dict) and "resumed" in p for _, p in later)
    assert text_of(later) == "getStringLength returned 6."
    assert later[-1][1] == "[DONE]"
    # The receiver comes back: both events arrive from the survivor, each under one id.
    receiver.answer("/hook", 200)
    delivered = _wait_for(
        "both events delivered",
        lambda: len(ok := _delivered(receiver)) == 2 and ok,
    )
    assert [event["type"] for event in delivered.values()] == [
        "approval.requested",
        "approval.decided",
    ]
    attempts = Counter(r.headers["x-gateway-event-id"] for r in receiver.at("/hook"))
    assert set(attempts) == set(delivered)  # redeliveries carry the same event id
    assert delivered[_id_of(delivered, "approval.decided")]["data"]["session"]["id"] == session_id
    # Relayed, the session leaves the index of outboxes to relay (no endless re-relaying).
    keys = Keys.of(stack.prefix, cluster=cluster is not None)
    client = stack.redis.client()
    _wait_for(
        "the outbox index emptied",
        lambda: not any(client.zcard(keys.outbox_due(n)) for n in keys.shards),
    )


def _delivered(receiver: Receiver) -> dict[str, dict[str, Any]]:
    """Event id -> event, of the deliveries answered with a 2xx, in order of first success."""
    ok: dict[str, dict[str, Any]] = {}
    for received in receiver.at("/hook"):
        event = received.event
        if received.status < 300:
            ok.setdefault(event["id"], event)
    return ok


def _id_of(delivered: dict[str, dict[str, Any]], kind: str) -> str:
    [event_id] = [i for i, e in delivered.items() if e["type"] == kind]
    return event_id
