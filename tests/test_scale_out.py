"""Many replicas behind nginx, one Redis, and the faults that happen in production weekly."""

from __future__ import annotations

import concurrent.futures
import time
from pathlib import Path

import httpx
import pytest

from core.keys import Keys
from tests.clients import HeldStream, consume, decide, stream_chat
from tests.conftest import StackFactory
from tests.processes import RedisServer


def ledger_lines(ledger: Path) -> list[str]:
    return ledger.read_text().splitlines() if ledger.exists() else []


def test_fifty_concurrent_decisions_over_all_replicas_have_one_winner(
    make_stack: StackFactory, tmp_path: Path
) -> None:
    stack = make_stack(replicas=3, workers=2)
    balancer = stack.add_nginx()
    ledger = tmp_path / "ledger.txt"
    held = HeldStream(balancer, f"chargeCard '{ledger}' 'order-1' 0.1")
    session_id = held.wait_pending()["id"]

    def post(i: int) -> tuple[str, int]:
        kind = "approve" if i % 2 else "reject"
        replica = stack.replicas[i % 3]
        return kind, decide(replica.url, session_id, kind, f"post {i}").status_code

    with concurrent.futures.ThreadPoolExecutor(50) as pool:
        outcomes = list(pool.map(post, range(50)))

    statuses = sorted(status for _kind, status in outcomes)
    assert statuses == [200] + [409] * 49
    [winner] = [kind for kind, status in outcomes if status == 200]
    seen = held.wait()
    starts = [line for line in ledger_lines(ledger) if line.startswith("start")]
    assert starts == (["start order-1"] if winner == "approve" else [])
    assert seen.tool_events[-1]["type"] == ("result" if winner == "approve" else "rejected")


def test_lost_pubsub_messages_cost_latency_not_the_decision(make_stack: StackFactory) -> None:
    stack = make_stack(replicas=2)
    holder, other = stack.replicas
    held = HeldStream(holder.url, "getStringLength of 'gap'")
    session_id = held.wait_pending()["id"]
    redis = stack.redis.client()
    killed = redis.execute_command("CLIENT", "KILL", "TYPE", "pubsub")  # type: ignore[no-untyped-call]
    assert killed >= 2  # every replica's one wake-up connection
    decided_at = time.monotonic()
    assert decide(other.url, session_id, "approve").status_code == 200
    seen = held.wait()
    assert seen.text == "getStringLength returned 3."
    assert held.finished_at - decided_at < 2.0 + 1.5  # within the re-read interval
    # The hubs reconnected and subscribed again.
    deadline = time.monotonic() + 5
    while time.monotonic() < deadline:
        if redis.pubsub_numsub(stack.keys.hub_channel)[0][1] == 2:
            break
        time.sleep(0.1)
    assert redis.pubsub_numsub(stack.keys.hub_channel)[0][1] == 2


def test_redis_frozen_for_three_seconds_hangs_nothing(
    make_stack: StackFactory, private_redis: RedisServer
) -> None:
    stack = make_stack(redis=private_redis)
    replica = stack.replicas[0]
    held = HeldStream(replica.url, "getStringLength of 'frozen'")
    session_id = held.wait_pending()["id"]
    private_redis.freeze()
    frozen_at = time.monotonic()
    try:
        started = time.monotonic()
        ready = httpx.get(f"{replica.url}/readyz", timeout=10)
        assert ready.status_code == 503
        assert time.monotonic() - started < 3.0  # bounded by the Redis timeout (2 s)
        time.sleep(max(0.0, 3.0 - (time.monotonic() - frozen_at)))
    finally:
        private_redis.thaw()
    assert decide(replica.url, session_id, "approve").status_code == 200
    assert held.wait().text == "getStringLength returned 6."


def test_redis_down_fails_fast_and_held_sessions_survive_its_restart(
    make_stack: StackFactory, private_redis: RedisServer
) -> None:
    stack = make_stack(redis=private_redis)
    replica = stack.replicas[0]
    held = HeldStream(replica.url, "getStringLength of 'restart'")
    session_id = held.wait_pending()["id"]
    time.sleep(1.1)  # AOF is fsynced every second
    private_redis.stop()
    time.sleep(0.5)
    started = time.monotonic()
    refused = httpx.post(
        f"{replica.url}/v1/chat/completions",
        json={"messages": [{"role": "user", "content": "hi"}]},
        timeout=10,
    )
    assert time.monotonic() - started < 1.0
    assert refused.status_code == 503
    assert refused.json()["error"]["code"] == "redis_unavailable"
    assert httpx.get(f"{replica.url}/readyz", timeout=10).status_code == 503

    private_redis.start()
    assert httpx.get(f"{replica.url}/v1/approvals/{session_id}").json()["status"] == "pending"
    assert decide(replica.url, session_id, "approve").status_code == 200
    assert held.wait().text == "getStringLength returned 7."


def test_expiry_reaches_the_holder_within_a_second_whoever_sweeps(
    make_stack: StackFactory,
) -> None:
    # The first replica takes the sweeper lock; the stream is held by the second.
    stack = make_stack(replicas=2, approval_timeout_s="2")
    holder = stack.replicas[1]
    seen = consume(stream_chat(holder.url, "getStringLength of 'late'"))
    pending, expired = seen.approvals
    assert expired["status"] == "expired"
    # The notice was received no later than 1 s after the deadline.
    assert seen.received_at[1] - pending["expires_at"] < 1.0


@pytest.mark.parametrize(
    ("tool", "outcome"), [("chargeCard", "unknown"), ("recordMetric", "result")]
)
def test_worker_killed_mid_tool_never_reruns_what_is_not_idempotent(
    make_stack: StackFactory, tmp_path: Path, tool: str, outcome: str
) -> None:
    stack = make_stack(workers=2, worker__claim_idle_ms="1000")
    replica = stack.replicas[0]
    ledger = tmp_path / "ledger.txt"
    held = HeldStream(replica.url, f"{tool} '{ledger}' 'job-1' 2")
    session_id = held.wait_pending()["id"]
    assert decide(replica.url, session_id, "approve").status_code == 200
    deadline = time.monotonic() + 10
    while "start job-1" not in ledger_lines(ledger) and time.monotonic() < deadline:
        time.sleep(0.02)
    running = httpx.get(f"{replica.url}/v1/approvals/{session_id}").json()["tool_calls"][0]
    assert running["status"] == "running"
    assert isinstance(stack.redis, RedisServer)
    [victim] = [w for w in stack.workers if w.pid == _worker_pid(stack.redis, stack.keys)]
    victim.kill()

    seen = held.wait(timeout=60)
    starts = [line for line in ledger_lines(ledger) if line == "start job-1"]
    last = seen.tool_events[-1]
    if outcome == "unknown":
        assert starts == ["start job-1"]  # never run twice
        assert last["type"] == "error" and last["outcome"] == "unknown"
        assert "outcome of this tool call is unknown" in seen.text
    else:
        assert len(starts) == 2  # the idempotent tool ran again and completed
        assert last["type"] == "result" and last["content"] == "recorded job-1"
        assert ledger_lines(ledger).count("end job-1") == 1


def test_worker_sigterm_finishes_the_call_in_hand(make_stack: StackFactory, tmp_path: Path) -> None:
    stack = make_stack(workers=1)
    replica = stack.replicas[0]
    ledger = tmp_path / "ledger.txt"
    held = HeldStream(replica.url, f"chargeCard '{ledger}' 'graceful' 1.5")
    assert decide(replica.url, held.wait_pending()["id"], "approve").status_code == 200
    deadline = time.monotonic() + 10
    while "start graceful" not in ledger_lines(ledger) and time.monotonic() < deadline:
        time.sleep(0.02)
    assert stack.workers[0].stop(timeout=15) == 0
    assert ledger_lines(ledger) == ["start graceful", "end graceful"]
    assert held.wait().tool_events[-1]["type"] == "result"


def _worker_pid(redis_server: RedisServer, keys: Keys) -> int:
    """The pid of the worker whose consumer holds a pending job (names are host-pid)."""
    pending = redis_server.client().xpending(keys.jobs, keys.jobs_group)
    [(consumer, _count)] = [(c["name"], c["pending"]) for c in pending["consumers"]]
    return int(consumer.rsplit("-", 1)[1])
