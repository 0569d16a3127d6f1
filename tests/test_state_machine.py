"""One state machine: the transition tables in `core.records` are what the Lua scripts do.

Every session script is driven through its branches on a real Redis; each status change it
makes (the session's, and each call's) is checked against `SESSION_TRANSITIONS` /
`CALL_TRANSITIONS`, and every entry of the tables must be made by some branch, so the
tables hold nothing dead. The scripts take their status strings from the enums.
"""

from __future__ import annotations

import asyncio
import itertools
import re
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from typing import Any, Literal

import pytest
from redis.asyncio import Redis
from redis.commands.core import AsyncScript

from core import scripts
from core.errors import SessionExpired
from core.keys import Keys
from core.records import (
    CALL_TRANSITIONS,
    SESSION_TRANSITIONS,
    CallStatus,
    SessionStatus,
    ToolResult,
    sources_of,
)
from core.store import CallDecisionItem, SessionStore
from tests.processes import RedisServer
from tests.sessions import new_session

Change = tuple[Literal["session", "call"], str, str]
"""One status change a script made: whose, from, to."""

TABLE: frozenset[Change] = frozenset(
    {("session", s.value, t.value) for s, targets in SESSION_TRANSITIONS.items() for t in targets}
    | {("call", s.value, t.value) for s, targets in CALL_TRANSITIONS.items() for t in targets}
)

SESSION_SCRIPTS = (
    "DECIDE_CALLS",
    "EXPIRE_IF_OVERDUE",
    "BEGIN_RUN",
    "TRANSITION",
    "START_CALL",
    "FINISH_CALL",
)
"""The scripts that move sessions and calls (`SessionStore` runs each)."""

_prefixes = itertools.count()


class _Observed:
    """A session script that records each status change it makes to its session hash."""

    def __init__(self, script: AsyncScript, redis: Redis, seen: set[Change]) -> None:
        self.script, self.redis, self.seen = script, redis, seen

    async def __call__(self, keys: Sequence[str], args: Sequence[Any]) -> Any:
        before: dict[str, str] = await self.redis.hgetall(keys[0])  # type: ignore[assignment]
        reply = await self.script(keys=keys, args=args)
        after: dict[str, str] = await self.redis.hgetall(keys[0])  # type: ignore[assignment]
        for field in before.keys() & after.keys():
            if field != "status" and not field.startswith("status:"):
                continue
            was, now = before[field], after[field]
            took_over = field == "status" and before.get("runner_token") != after.get(
                "runner_token"
            )
            if was != now or took_over:
                self.seen.add(("session" if field == "status" else "call", was, now))
        return reply


Observe = tuple[SessionStore, set[Change]]


@pytest.fixture
async def observed(redis_server: RedisServer) -> AsyncIterator[Observe]:
    """A store whose every session script reports the changes it made."""
    client = Redis.from_url(redis_server.url, decode_responses=True)
    store = SessionStore(client, Keys(f"machine{next(_prefixes)}"), retention_s=60)
    seen: set[Change] = set()
    for name in (
        "_decide_calls",
        "_expire",
        "_begin_run",
        "_transition",
        "_start_call",
        "_finish_call",
    ):
        setattr(store, name, _Observed(getattr(store, name), client, seen))
    yield store, seen
    await client.aclose()


async def decide(store: SessionStore, session_id: str, call_id: str, kind: Any) -> str:
    """Decide one call `kind`-wise (an edit changes its arguments; a respond supplies 42)."""
    record = await store.get(session_id)
    call = next(c for c in record.view.tool_calls if c.id == call_id)
    item = CallDecisionItem.build(
        call,
        kind,
        "because",
        "alice",
        arguments={"text": "edited"} if kind == "edit" else None,
        result="42" if kind == "respond" else None,
    )
    outcome, _ = await store.decide_calls(session_id, [item], record.view.tenant)
    return outcome


def result(status: Literal["succeeded", "failed"]) -> ToolResult:
    return ToolResult(status=status, content="done", worker="w1")


async def approve_edit_and_run(store: SessionStore) -> None:
    """Partial decisions, a client call released, worker success and failure, completion."""
    session_id = await new_session(store, ["server", "server", "client"])
    assert await decide(store, session_id, "call_0", "approve") == "partial"
    assert await decide(store, session_id, "call_1", "edit") == "partial"
    assert await decide(store, session_id, "call_2", "approve") == "decided"
    claim = await store.begin_run(session_id, "r1")
    assert claim.queued == ["call_0", "call_1"]
    assert claim.record is not None
    assert claim.record.view.tool_calls[2].status is CallStatus.RELEASED
    assert (await store.start_call(session_id, "call_0", "w1", job_id="1-0"))[0] == "run"
    assert (await store.start_call(session_id, "call_1", "w1", job_id="2-0"))[0] == "run"
    assert await store.finish_call(session_id, "call_0", result("succeeded"))
    assert await store.finish_call(session_id, "call_1", result("failed"))
    assert not await store.finish_call(session_id, "call_1", result("succeeded"))
    assert (await store.start_call(session_id, "call_0", "w2", job_id="1-0"))[0] == "skip"
    assert await store.finish(session_id, SessionStatus.COMPLETED)
    assert not await store.finish(session_id, SessionStatus.FAILED)


async def reject_and_fail(store: SessionStore) -> None:
    """Every call rejected: the continuation runs no call, and then breaks."""
    session_id = await new_session(store, ["server", "server"])
    assert not await store.finish(session_id, SessionStatus.FAILED)  # still pending: refused
    assert (await store.begin_run(session_id, "r1")).queued is None
    applied, after = await store.decide_all(session_id, "reject", "no", "alice")
    assert applied and after.status is SessionStatus.REJECTED
    assert (await store.begin_run(session_id, "r1")).queued == []
    assert await store.finish(session_id, SessionStatus.FAILED)


async def respond_then_expire(store: SessionStore) -> None:
    """A call responded to, the other left to the deadline (the sweeper's path)."""
    session_id = await new_session(store, ["server", "server"], ttl=1.0)
    assert await decide(store, session_id, "call_0", "respond") == "partial"
    assert await store.expire_if_overdue(session_id) is SessionStatus.PENDING
    await asyncio.sleep(1.1)
    assert await store.expire_if_overdue(session_id) is SessionStatus.EXPIRED
    assert await store.expire_if_overdue(session_id) is SessionStatus.EXPIRED
    claim = await store.begin_run(session_id, "r1")
    assert claim.queued == [] and claim.status is SessionStatus.EXPIRED


async def decide_too_late(store: SessionStore) -> None:
    """A decision that arrives after the deadline expires the session itself."""
    session_id = await new_session(store, ["server"], ttl=1.0)
    await asyncio.sleep(1.1)
    with pytest.raises(SessionExpired):
        await decide(store, session_id, "call_0", "approve")


async def reclaim(store: SessionStore) -> None:
    """Jobs whose worker died: not idempotent (unknown), retried, then out of attempts."""
    session_id = await new_session(store, ["server", "server"])
    await store.decide_all(session_id, "approve", "", "alice")
    assert (await store.begin_run(session_id, "r1")).queued == ["call_0", "call_1"]
    for call_id in ("call_0", "call_1"):
        assert (await store.start_call(session_id, call_id, "w1", job_id="1-0"))[0] == "run"
    outcome, _ = await store.start_call(session_id, "call_0", "w2", reclaimed=True)
    assert outcome == "unknown"
    retry = await store.start_call(
        session_id, "call_1", "w2", reclaimed=True, idempotent=True, max_attempts=2
    )
    assert retry[0] == "run"
    outcome, _ = await store.start_call(
        session_id, "call_1", "w3", reclaimed=True, idempotent=True, max_attempts=2
    )
    assert outcome == "exhausted"


async def take_over(store: SessionStore) -> None:
    """A runner with a newer lease takes over a running session and re-queues its calls."""
    session_id = await new_session(store, ["server"])
    await store.decide_all(session_id, "approve", "", "alice")
    assert (await store.begin_run(session_id, "r1", token=1)).queued == ["call_0"]
    again = await store.begin_run(session_id, "r1", token=1)  # a retried claim: same answer
    assert again.queued == ["call_0"] and again.status is SessionStatus.RUNNING
    assert (await store.begin_run(session_id, "r2", token=1)).queued is None  # not newer
    claim = await store.begin_run(session_id, "r2", token=2)
    assert claim.queued == ["call_0"] and claim.status is SessionStatus.RUNNING


SCENARIOS: dict[str, Callable[[SessionStore], Awaitable[None]]] = {
    "approve_edit_and_run": approve_edit_and_run,
    "reject_and_fail": reject_and_fail,
    "respond_then_expire": respond_then_expire,
    "decide_too_late": decide_too_late,
    "reclaim": reclaim,
    "take_over": take_over,
}


@pytest.mark.parametrize("scenario", sorted(SCENARIOS))
async def test_every_change_a_script_makes_is_in_the_table(
    observed: Observe, scenario: str
) -> None:
    store, seen = observed
    await SCENARIOS[scenario](store)
    assert seen, "the scenario changed no status"
    assert seen - TABLE == set()


async def test_every_transition_in_the_table_is_made_by_some_script(observed: Observe) -> None:
    store, seen = observed
    for run in SCENARIOS.values():
        await run(store)
    assert TABLE - seen == set()
    assert ("session", "running", "running") in seen  # the lease takeover


def test_the_takeover_is_not_a_source_the_scripts_are_given() -> None:
    """`BEGIN_RUN` allows `running → running` only through its own fencing-token check."""
    assert SessionStatus.RUNNING.value not in sources_of(SessionStatus.RUNNING)


STATUS_WORDS = {s.value for s in SessionStatus} | {s.value for s in CallStatus}


@pytest.mark.parametrize("name", SESSION_SCRIPTS)
def test_no_status_is_written_by_hand_in_a_session_script(name: str) -> None:
    body = getattr(scripts, name).replace(scripts.STATUSES, "")
    quoted = set(re.findall(r"'([a-z_]+)'", body))
    assert quoted & STATUS_WORDS == set()


def test_the_lua_status_tables_are_the_enums() -> None:
    for lua_name, enum in (("SESSION", SessionStatus), ("CALL", CallStatus)):
        line = next(ln for ln in scripts.STATUSES.splitlines() if f"local {lua_name} " in ln)
        assert dict(re.findall(r"(\w+) = '(\w+)'", line)) == {s.name: s.value for s in enum}
