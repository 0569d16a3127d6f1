"""Re-attach and resume: ids on every event, runs that outlive their client or replica."""

from __future__ import annotations

import signal
import time
from collections.abc import Iterator

import httpx
import redis

from tests.clients import decide, hold, read_events, reattach, text_of, user
from tests.conftest import Replica, Stack, StackFactory
from tests.mediation import wait_for
from tests.processes import RedisServer
from tests.redis_state import lease_expires_at, wait_lease_released

LEASE_S = 10.0
"""A run's lease (the default); a run renews it every third of it."""


def test_every_event_has_an_id_and_reattach_sends_exactly_the_missed_ones(
    make_stack: StackFactory,
) -> None:
    replica = make_stack().replicas[0]
    body = {"model": "m", "stream": True, "messages": user("getStringLength of 'ids'")}
    with httpx.stream("POST", f"{replica.url}/v1/chat/completions", json=body, timeout=30) as r:
        original = read_events(r.iter_lines(), until_approval=True)
    assert all(event_id for event_id, _ in original)
    assert [int(i) for i, _ in original] == list(range(1, len(original) + 1))
    session_id = original[-1][1]["approval"]["id"]
    notice_id = int(original[-1][0])
    # The client is gone; the decision still runs the tool and the model (the run goes on).
    assert decide(replica.url, session_id, "approve").status_code == 200
    missed = reattach(replica.url, session_id, notice_id)
    ids = [int(i) for i, _ in missed]
    assert ids[0] == notice_id + 1 and ids == sorted(ids)
    assert missed[-1][1] == "[DONE]"
    assert text_of(missed) == "getStringLength returned 3."
    tool_events = [p["tool_event"]["type"] for _, p in missed if "tool_event" in p]
    assert tool_events == ["executing", "result"]
    # From the middle: only what follows the given id.
    later = reattach(replica.url, session_id, ids[2])
    assert [int(i) for i, _ in later] == [i for i in ids if i > ids[2]]
    # After the end (an EventSource reconnects with the [DONE] id): [DONE] again and nothing
    # more, and the finished run is not taken over and run again.
    wait_lease_released(replica.stack, session_id)  # given back once the run has ended
    assert reattach(replica.url, session_id, ids[-1]) == [("", "[DONE]")]


def test_reattach_on_another_replica_follows_the_live_run(make_stack: StackFactory) -> None:
    holder, other = make_stack(replicas=2).replicas
    session_id, _ = hold(holder.url, "getStringLength of 'follow'")
    # A follower on the other replica, from the notice on, while the run is still pending.
    with httpx.stream(
        "GET", f"{other.url}/v1/approvals/{session_id}/stream", timeout=60
    ) as response:
        lines = response.iter_lines()
        first = next(line for line in lines if line.startswith("data: "))
        assert "approval" in first
        assert decide(holder.url, session_id, "approve").status_code == 200
        rest = read_events(lines)
    assert text_of(rest) == "getStringLength returned 6."
    assert rest[-1][1] == "[DONE]"
    assert not any("resumed" in p for _, p in rest if isinstance(p, dict))  # no takeover


def test_client_disconnect_while_pending_leaks_no_connection(make_stack: StackFactory) -> None:
    stack = make_stack(lease_s=str(LEASE_S))
    replica = stack.replicas[0]
    assert isinstance(stack.redis, RedisServer)
    client = stack.redis.client()
    hold(replica.url, "getStringLength of 'warm up'")  # the pool reaches its working size
    baseline = _connections(client, replica)
    streams = 20
    sessions = [hold(replica.url, f"getStringLength of 'gone {i}'")[0] for i in range(streams)]
    deadline = time.monotonic() + 10
    while httpx.get(f"{replica.url}/readyz").json()["held_streams"] and time.monotonic() < deadline:
        time.sleep(0.05)
    assert httpx.get(f"{replica.url}/readyz").json()["held_streams"] == 0
    for session_id in sessions:
        assert httpx.get(f"{replica.url}/v1/approvals/{session_id}").json()["status"] == "pending"
    # Every run has renewed its lease since now (every LEASE_S / 3), and its session has
    # been re-read (every 2 s) meanwhile: each lease's expiry moves past now + LEASE_S +
    # 2.5 s only by a renewal 2.5 s or more from now.
    now = time.time()
    renewed = wait_for(
        lambda: all(lease_expires_at(stack, s) > now + LEASE_S + 2.5 for s in sessions), 15
    )
    assert renewed, "a held run did not renew its lease"
    # Twenty sessions whose clients left cost no connection each: one pub/sub connection per
    # process, and a command pool sized by how many commands overlap, not by streams. (The
    # twenty runs' rereads and lease renewals can overlap a few at a time on a loaded
    # machine: a full suite run once saw baseline + 3; a leak would show about + 20.)
    assert _connections(client, replica) <= baseline + streams // 4
    assert client.pubsub_numsub(stack.keys.hub_channel)[0][1] == 1


def test_holder_killed_while_pending_client_resumes_through_nginx(
    make_stack: StackFactory,
) -> None:
    stack = make_stack(replicas=3, lease_s="1.5")
    balancer = stack.add_nginx()
    session_id, notice_id = hold(balancer, "getStringLength of 'survivor'")
    holder = _lease_holder(stack, session_id)
    holder.process.kill()
    assert decide(balancer, session_id, "approve").status_code == 200
    started = time.monotonic()
    rest = reattach(balancer, session_id, notice_id)
    assert time.monotonic() - started < 10
    assert int(rest[0][0]) == notice_id + 1
    assert "resumed" in rest[0][1]  # another replica took the run over
    assert text_of(rest) == "getStringLength returned 8."
    assert rest[-1][1] == "[DONE]"


def test_sigterm_hands_held_streams_to_another_replica(make_stack: StackFactory) -> None:
    stack = make_stack(replicas=2)
    leaving, staying = stack.replicas
    body = {"model": "m", "stream": True, "messages": user("getStringLength of 'handover'")}
    with httpx.stream("POST", f"{leaving.url}/v1/chat/completions", json=body, timeout=30) as r:
        lines = r.iter_lines()
        held = read_events(_until_approval(lines))
        session_id = held[-1][1]["approval"]["id"]
        started = time.monotonic()
        leaving.process.signal(signal.SIGTERM)
        after = read_events(lines)
    [(_, goodbye), (_, done)] = after
    assert done == "[DONE]"
    reattach_to = goodbye["reattach"]
    assert reattach_to["url"] == f"/v1/approvals/{session_id}/stream"
    assert reattach_to["last_event_id"] == held[-1][0]
    assert leaving.process.popen is not None
    leaving.process.popen.wait(timeout=10)
    assert time.monotonic() - started < 8  # bounded shutdown
    assert decide(staying.url, session_id, "approve").status_code == 200
    rest = reattach(staying.url, session_id, int(reattach_to["last_event_id"]))
    assert text_of(rest) == "getStringLength returned 8."


def _until_approval(lines: Iterator[str]) -> Iterator[str]:
    for line in lines:
        yield line
        if line.startswith("data: ") and '"approval"' in line:
            return


def _connections(client: redis.Redis, replica: Replica) -> int:
    """The replica's own connections to Redis (each names itself `gateway:<host>:<pid>:…`)."""
    marker = f":{replica.process.pid}:"
    names = [c["name"] for c in client.client_list()]
    return sum(1 for name in names if name.startswith("gateway:") and marker in name)


def _lease_holder(stack: Stack, session_id: str) -> Replica:
    owner = stack.redis.client().get(stack.keys.lease(session_id))
    assert owner is not None
    pid = int(str(owner).split(":")[1])
    [replica] = [r for r in stack.replicas if r.process.pid == pid]
    return replica
