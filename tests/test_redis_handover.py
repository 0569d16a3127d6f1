"""Redis unavailable under a re-attached stream does not end the run for its client: the
stream says where to re-attach instead of ending with an error, and the next re-attach
gets the whole answer. (Before, it ended with a `redis_unavailable` error event and
`[DONE]`, which a client takes for the end of its run. The same change on the run's side,
a run handed over rather than ended when its own step finds Redis unavailable, is what
`make load-faults` exercises: an exhausted connection pool under a burst of takeovers.)"""

from __future__ import annotations

import threading
import time
from typing import Any

import httpx

from tests.clients import HeldStream, decide, reattach, sse_data
from tests.conftest import StackFactory
from tests.processes import RedisServer

FROZEN_S = 5.0
"""Longer than a follower's re-read (1 s here) plus a Redis timeout (2 s), shorter than the
holder's lease (10 s): only the follower meets the outage."""


class _Follower:
    """A re-attached stream read in a thread, kept as `(id, payload)` pairs."""

    def __init__(self, url: str, session_id: str, last_event_id: int) -> None:
        self.events: list[tuple[str, Any]] = []
        self.attached = threading.Event()
        headers = {"Last-Event-ID": str(last_event_id)}
        target = f"{url}/v1/approvals/{session_id}/stream"
        self._thread = threading.Thread(target=self._read, args=(target, headers), daemon=True)
        self._thread.start()

    def _read(self, target: str, headers: dict[str, str]) -> None:
        with httpx.stream("GET", target, headers=headers, timeout=60) as response:
            assert response.status_code == 200
            self.attached.set()
            event_id = ""
            for line in response.iter_lines():
                if line.startswith("id: "):
                    event_id = line[len("id: ") :]
                elif line.startswith("data: "):
                    self.events.append((event_id, sse_data([line])[0]))
                    event_id = ""

    def join(self) -> list[tuple[str, Any]]:
        self._thread.join(timeout=60)
        assert not self._thread.is_alive()
        return self.events


def test_a_reattached_stream_that_meets_redis_down_is_sent_to_reattach_not_ended(
    make_stack: StackFactory, private_redis: RedisServer
) -> None:
    stack = make_stack(replicas=2, redis=private_redis, reread_interval_s="1")
    replica, other = stack.replicas
    held = HeldStream(replica.url, "getStringLength of 'frozen'")
    session_id = held.wait_pending()["id"]
    follower = _Follower(other.url, session_id, 0)  # the run is held on the first replica
    assert follower.attached.wait(30)
    private_redis.freeze()
    try:
        time.sleep(FROZEN_S)
    finally:
        private_redis.thaw()
    cut = follower.join()

    payloads = [p for _, p in cut]
    assert not [p for p in payloads if isinstance(p, dict) and "error" in p], payloads
    told = [p["reattach"] for p in payloads if isinstance(p, dict) and "reattach" in p]
    assert [t["url"] for t in told] == [f"/v1/approvals/{session_id}/stream"]
    assert payloads[-1] == "[DONE]"

    # The run itself went on: decided now, its holder and a new re-attach both get all of it.
    assert decide(replica.url, session_id, "approve").status_code == 200
    assert held.wait().text == "getStringLength returned 6."
    again = reattach(other.url, session_id, int(told[0]["last_event_id"]))
    text = "".join(
        p["choices"][0]["delta"].get("content") or ""
        for _, p in again
        if isinstance(p, dict) and p.get("choices")
    )
    assert text == "getStringLength returned 6."
    assert again[-1][1] == "[DONE]"
