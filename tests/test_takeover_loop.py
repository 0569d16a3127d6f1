"""Replicas killed at random points of a run, over and over: what the client sees stays true.

Each round streams a chat whose two tool calls are approved, then `kill -9`s the replica
driving the run at a random moment (tools running, results arriving, the answer streaming,
or after the end) and re-attaches on another replica with the last event id it received.
Across the rounds: ids strictly increase, an id names the same event for the client and in
the run's log, every `executing` has its `result`, `resumed` marks every takeover, and the
answer arrives whole after the last `resumed`.
"""

from __future__ import annotations

import random
import threading
import time
from collections import defaultdict
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.clients import decide, read_events, reattach, user
from tests.conftest import Replica, Stack, StackFactory
from tests.hostile import HostileUpstream, call, turn
from tests.redis_cluster import redis_cluster_fixture  # noqa: F401 - the `redis_cluster` fixture

TAKEOVERS = 20
"""Rounds whose kill landed before the run ended (a replica had to take it over)."""
MAX_ROUNDS = 40
ANSWER = " ".join(f"word{n}" for n in range(40)) + "."

Events = list[tuple[str, Any]]


class _Client:
    """A streamed chat read in a thread, keeping what arrived when the connection breaks."""

    def __init__(self, url: str, prompt: str) -> None:
        self.events: Events = []
        self.broken = False
        self._thread = threading.Thread(target=self._read, args=(url, prompt), daemon=True)
        self._thread.start()

    def _read(self, url: str, prompt: str) -> None:
        body = {"model": "m", "stream": True, "messages": user(prompt)}
        try:
            with httpx.stream("POST", f"{url}/v1/chat/completions", json=body, timeout=60) as r:
                event_id = ""
                for line in r.iter_lines():
                    if line.startswith("id: "):
                        event_id = line[len("id: ") :]
                    elif line.startswith("data: "):
                        self.events.append((event_id, read_events([line])[0][1]))
        except httpx.TransportError:
            self.broken = True

    def notice(self, timeout: float = 20) -> tuple[str, int]:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            for event_id, payload in list(self.events):
                if isinstance(payload, dict) and "approval" in payload:
                    return payload["approval"]["id"], int(event_id)
            time.sleep(0.02)
        raise AssertionError(f"no approval notice in {self.events}")

    def join(self) -> Events:
        self._thread.join(timeout=60)
        assert not self._thread.is_alive()
        return self.events


def _groups(events: Events) -> list[tuple[int, list[Any]]]:
    """Consecutive data lines of one id, as (id, payloads); the ids must never go back."""
    groups: list[tuple[int, list[Any]]] = []
    for event_id, payload in events:
        if not event_id:  # `[DONE]` after a failure or a re-attach notice carries none
            continue
        seq = int(event_id)
        if groups and groups[-1][0] == seq:
            groups[-1][1].append(payload)
        else:
            groups.append((seq, [payload]))
    return groups


def _kind(payload: Any, key: str) -> Any:
    return payload.get(key) if isinstance(payload, dict) else None


def _text_after_last_resume(payloads: list[Any]) -> str:
    text: list[str] = []
    for payload in payloads:
        if _kind(payload, "resumed"):
            text = []
        elif isinstance(payload, dict) and payload.get("choices"):
            text.append(payload["choices"][0]["delta"].get("content") or "")
    return "".join(text)


def _restart(replica: Replica) -> threading.Thread:
    def start() -> None:
        replica.process.popen = None
        replica.start()

    thread = threading.Thread(target=start, daemon=True)
    thread.start()
    return thread


def _round(stack: Stack, hostile: HostileUpstream, ledger: Path, rng: random.Random) -> bool:
    """One chat, one kill; True when the kill landed before the run ended."""
    entries = [f"e{rng.randrange(10**9)}", f"e{rng.randrange(10**9)}"]
    calls = [
        call("recordMetric", {"ledger": str(ledger), "entry": e, "seconds": rng.uniform(0.1, 1)})
        for e in entries
    ]
    marker = hostile.script(turn(*calls), after_tools=turn(text=ANSWER, pace_s=0.03))
    holder = rng.choice(stack.replicas)
    others = [r for r in stack.replicas if r is not holder]
    client = _Client(holder.url, f"record {marker}")
    session_id, notice_id = client.notice()
    assert decide(rng.choice(others).url, session_id, "approve").status_code == 200
    time.sleep(rng.uniform(0, 2.5))  # the random point of the run the kill lands on
    holder.process.kill()
    first = client.join()
    restarted = _restart(holder)
    try:
        cut = not first or first[-1][1] != "[DONE]"
        last_id = max(int(i) for i, _ in first if i)
        rest = reattach(rng.choice(others).url, session_id, last_id) if cut else []
        full = reattach(rng.choice(others).url, session_id, 0)
    finally:
        restarted.join(timeout=30)
    seen = first + rest
    assert seen[-1][1] == "[DONE]", seen[-5:]
    # Ids strictly increase across the cut, and each names what the run's log says it does.
    groups = _groups(seen)
    ids = [seq for seq, _ in groups]
    assert ids == sorted(set(ids)), ids
    logged = dict(_groups(full))
    assert min(logged) == notice_id
    for seq, payloads in groups:
        if seq >= notice_id:
            assert logged[seq] == payloads, (seq, payloads, logged.get(seq))
    # A takeover the client missed is one it is told of.
    resumed_after_cut = [s for s, p in logged.items() if s > last_id and _kind(p[0], "resumed")]
    assert bool(resumed_after_cut) == any(_kind(p, "resumed") for _, p in rest)
    # Every call's progress: executing once, then its result once.
    progress: dict[str, list[str]] = defaultdict(list)
    for _, payload in seen:
        tool_event = _kind(payload, "tool_event")
        if tool_event:
            progress[tool_event["tool_call_id"]].append(tool_event["type"])
    assert sorted(progress.values()) == [["executing", "result"]] * 2, progress
    assert _text_after_last_resume([p for _, p in seen]) == ANSWER
    ran = ledger.read_text()
    assert all(f"end {entry}\n" in ran for entry in entries)  # every approved call ran
    return cut and bool(resumed_after_cut)


@pytest.mark.timeout(900)
@pytest.mark.parametrize(
    "store", ["redis", pytest.param("cluster", marks=[pytest.mark.cluster, pytest.mark.soak])]
)
def test_replica_killed_at_random_points_twenty_times(
    make_stack: StackFactory,
    hostile_upstream: HostileUpstream,
    tmp_path: Path,
    request: pytest.FixtureRequest,
    store: str,
) -> None:
    seed = random.randrange(2**32)
    print(f"seed {seed}")
    rng = random.Random(seed)
    cluster = request.getfixturevalue("redis_cluster") if store == "cluster" else None
    stack = make_stack(
        replicas=3, workers=2, upstream=hostile_upstream.url, lease_s="1", redis=cluster
    )
    ledger = tmp_path / "ledger.txt"
    takeovers = rounds = 0
    while takeovers < TAKEOVERS:
        rounds += 1
        assert rounds <= MAX_ROUNDS, f"only {takeovers} takeovers in {MAX_ROUNDS} rounds"
        takeovers += _round(stack, hostile_upstream, ledger, rng)
