"""Edges of takeover and replay a hostile review found: long logs, many re-attaches at once,
and a model whose call arguments imitate the log's own events."""

from __future__ import annotations

import threading
import time
from typing import Any

import httpx

from tests.clients import decide, hold, read_events, reattach, user
from tests.conftest import StackFactory
from tests.hostile import HostileUpstream, call, turn

LONG = " ".join(f"w{n}" for n in range(1500))


def _status(url: str, session_id: str) -> str:
    return str(httpx.get(f"{url}/v1/approvals/{session_id}").json()["status"])


def _wait_status(url: str, session_id: str, wanted: str, timeout: float = 30) -> None:
    deadline = time.monotonic() + timeout
    while _status(url, session_id) != wanted:
        assert time.monotonic() < deadline, f"{session_id} is {_status(url, session_id)}"
        time.sleep(0.1)


def test_a_replay_longer_than_a_page_sends_every_event(
    make_stack: StackFactory, hostile_upstream: HostileUpstream
) -> None:
    replica = make_stack(upstream=hostile_upstream.url).replicas[0]
    marker = hostile_upstream.script(
        turn(call("getStringLength", {"text": "one"})), after_tools=turn(text=LONG, pace_s=0.0001)
    )
    session_id, notice_id = hold(replica.url, f"count {marker}")
    assert decide(replica.url, session_id, "approve").status_code == 200
    _wait_status(replica.url, session_id, "completed")
    ids: list[int] = []
    deadline = time.monotonic() + 30
    while not ids or ids[-1] == notice_id:  # until the run's end is logged
        assert time.monotonic() < deadline
        replay = reattach(replica.url, session_id, notice_id)
        ids = [int(i) for i, _ in replay if i]
    assert ids == list(range(notice_id + 1, ids[-1] + 1))  # no gap, past the 1,000th
    assert len(set(ids)) > 1500 and replay[-1][1] == "[DONE]"


def test_many_reattaches_at_once_take_a_run_over_once(make_stack: StackFactory) -> None:
    stack = make_stack(replicas=2, lease_s="1")
    doomed, survivor = stack.replicas
    session_id, notice_id = hold(doomed.url, "getStringLength of 'twice'")
    doomed.process.kill()
    lease = stack.keys.lease(session_id)
    redis = stack.redis.client()
    deadline = time.monotonic() + 10
    while redis.exists(lease):
        assert time.monotonic() < deadline
        time.sleep(0.01)
    barrier = threading.Barrier(8)
    seen: dict[int, list[tuple[str, Any]]] = {}

    def follow(n: int) -> None:
        barrier.wait()
        seen[n] = reattach(survivor.url, session_id, notice_id)

    threads = [threading.Thread(target=follow, args=(n,)) for n in range(8)]
    for thread in threads:
        thread.start()
    _wait_status(survivor.url, session_id, "pending")
    assert decide(survivor.url, session_id, "approve").status_code == 200
    for thread in threads:
        thread.join(30)
    assert _status(survivor.url, session_id) == "completed"
    log = reattach(survivor.url, session_id, notice_id)
    assert sum(1 for _, p in log if isinstance(p, dict) and "resumed" in p) == 1
    assert not any(isinstance(p, dict) and "error" in p for _, p in log)
    assert all(events == log for events in seen.values())  # every follower saw the one log


def test_call_arguments_that_imitate_a_log_event_do_not_stop_takeovers(
    make_stack: StackFactory, hostile_upstream: HostileUpstream
) -> None:
    stack = make_stack(replicas=2, upstream=hostile_upstream.url, lease_s="1")
    doomed, survivor = stack.replicas
    tool = {
        "type": "function",
        "function": {
            "name": "clientThing",
            "parameters": {"type": "object", "properties": {"k": {"type": "string"}}},
        },
    }
    poison = hostile_upstream.script(turn(call("clientThing", {"k": "tool"})))
    body = {"model": "m", "stream": True, "messages": user(f"go {poison}"), "tools": [tool]}
    with httpx.stream("POST", f"{doomed.url}/v1/chat/completions", json=body, timeout=30) as r:
        poisoned = read_events(r.iter_lines(), until_approval=True)[-1][1]["approval"]["id"]
    normal = hostile_upstream.script(
        turn(call("getStringLength", {"text": "abc"})), after_tools=turn(text="three")
    )
    ordinary, _ = hold(doomed.url, f"count {normal}")
    doomed.process.kill()
    # The survivor's sweeper adopts both orphans; the poisoned one must not stop it.
    assert decide(survivor.url, poisoned, "approve").status_code == 200
    assert decide(survivor.url, ordinary, "approve").status_code == 200
    _wait_status(survivor.url, ordinary, "completed")
    _wait_status(survivor.url, poisoned, "completed")
