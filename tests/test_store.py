"""Session store transitions on a real Redis: the table in code is what the scripts do."""

from __future__ import annotations

import asyncio
import itertools
from collections.abc import AsyncIterator

import pytest
from redis.asyncio import Redis

from core.errors import DecisionConflict, SessionExpired, SessionNotFound
from core.keys import Keys
from core.records import (
    SESSION_TRANSITIONS,
    CallStatus,
    SessionStatus,
    ToolResult,
    arguments_sha256,
    sources_of,
)
from core.store import SessionStore, new_session_id
from tests.processes import RedisServer
from tests.sessions import new_session

_prefixes = itertools.count()


@pytest.fixture
async def store(redis_server: RedisServer) -> AsyncIterator[SessionStore]:
    client = Redis.from_url(redis_server.url, decode_responses=True)
    yield SessionStore(client, Keys(f"store{next(_prefixes)}"), retention_s=60)
    await client.aclose()


def test_every_status_is_in_the_transition_table_and_terminals_have_no_exit() -> None:
    assert set(SESSION_TRANSITIONS) == set(SessionStatus)
    assert SESSION_TRANSITIONS[SessionStatus.COMPLETED] == frozenset()
    assert sources_of(SessionStatus.RUNNING) == ["approved", "expired", "rejected"]


async def test_running_can_only_start_from_a_decided_session(store: SessionStore) -> None:
    session_id = await new_session(store)
    refused = await store.begin_run(session_id, "r1")  # pending: refused, and cheaply
    assert (refused.queued, refused.status, refused.record) == (None, SessionStatus.PENDING, None)
    await store.decide_all(session_id, "approve", "", "alice")
    claim = await store.begin_run(session_id, "r1")
    assert claim.queued == ["call_0"] and claim.status is SessionStatus.APPROVED
    assert claim.record is not None and claim.record.status is SessionStatus.RUNNING
    again = await store.begin_run(session_id, "r1")  # a lost reply, asked again: same answer
    assert again.queued == ["call_0"]
    taken = await store.begin_run(session_id, "r2")  # claimed once only
    assert taken.queued is None and taken.status is SessionStatus.RUNNING
    assert taken.record is not None
    assert (await store.get(session_id)).status is SessionStatus.RUNNING
    assert not await store.finish(new_session_id(), SessionStatus.COMPLETED)
    assert await store.finish(session_id, SessionStatus.COMPLETED)
    assert not await store.finish(session_id, SessionStatus.FAILED)  # terminal


async def test_decide_reports_not_found_conflict_and_expiry(store: SessionStore) -> None:
    with pytest.raises(SessionNotFound):
        await store.decide_all("as_missing", "approve", "", "alice")
    session_id = await new_session(store)
    applied, record = await store.decide_all(session_id, "reject", "no", "alice")
    assert applied and record.status is SessionStatus.REJECTED
    repeat, _ = await store.decide_all(session_id, "reject", "no", "bob")
    assert not repeat
    with pytest.raises(DecisionConflict):
        await store.decide_all(session_id, "approve", "", "bob")
    with pytest.raises(DecisionConflict):  # the same kind with another reason is another decision
        await store.decide_all(session_id, "reject", "other words", "bob")
    short = await new_session(store, ttl=0.2)
    await asyncio.sleep(0.3)
    with pytest.raises(SessionExpired):
        await store.decide_all(short, "approve", "", "alice")
    record = await store.get(short)
    assert record.status is SessionStatus.EXPIRED
    assert {c.status for c in record.view.tool_calls} == {CallStatus.EXPIRED}


async def test_start_call_lets_exactly_one_of_ten_concurrent_claimants_run_a_call(
    store: SessionStore,
) -> None:
    """The store's rule that a worker relies on (`start_call`, one script): of ten claims of
    one queued call at once, one gets `run`. No worker process runs here."""
    session_id = await new_session(store)
    await store.decide_all(session_id, "approve", "", "alice")
    await store.begin_run(session_id, "r1")
    starts = await asyncio.gather(
        *(store.start_call(session_id, "call_0", f"w{i}") for i in range(10))
    )
    assert [outcome for outcome, _call in starts].count("run") == 1
    result = ToolResult(status="succeeded", content="0")
    assert await store.finish_call(session_id, "call_0", result)
    assert not await store.finish_call(session_id, "call_0", result)  # stored once
    call = (await store.get(session_id)).view.tool_calls[0]
    assert call.status is CallStatus.SUCCEEDED and call.result == result


async def test_a_decision_wakes_a_subscriber(store: SessionStore) -> None:
    session_id = await new_session(store)
    pubsub = store.redis.pubsub()
    await pubsub.subscribe(store.keys.wakeup_channel(session_id))
    await pubsub.get_message(timeout=1)  # the subscribe confirmation
    await store.decide_all(session_id, "approve", "", "alice")
    message = await pubsub.get_message(timeout=2, ignore_subscribe_messages=True)
    assert message is not None and message["data"] == "decided"
    await pubsub.aclose()


def test_argument_hash_is_canonical() -> None:
    assert arguments_sha256({"b": 1, "a": "é"}) == arguments_sha256({"a": "é", "b": 1.0})
    assert arguments_sha256({"a": 1}) != arguments_sha256({"a": 2})
