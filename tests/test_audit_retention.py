"""Audit retention per tenant, on a real Redis: size and age bounds, and merged reads.

Each tenant's events live in a stream of their own, so one tenant's flood trims only its
own history; entries older than the retention go on the next append. An admin reads every
tenant's stream merged in time order and pages it with `after`; an approver's read is
its own tenant's stream.
"""

from __future__ import annotations

import asyncio
import itertools
import time
from collections.abc import AsyncIterator
from typing import Any

import pytest
from redis.asyncio import Redis

from core.audit import AuditEntry, AuditLog
from core.keys import Keys
from tests.processes import RedisServer

_prefixes = itertools.count()
DAY_MS = 24 * 3600 * 1000


@pytest.fixture
async def redis(redis_server: RedisServer) -> AsyncIterator[Redis]:
    client = Redis.from_url(redis_server.url, decode_responses=True)
    yield client
    await client.aclose()


@pytest.fixture
def keys() -> Keys:
    return Keys(f"audit{next(_prefixes)}")


def event(tenant: str, session: str) -> AuditEntry:
    return AuditEntry("requested", session=session, tool="writeNote", tenant=tenant)


async def sessions_of(audit: AuditLog, tenant: str | None) -> list[str]:
    return [entry["session"] async for entry in audit.entries(tenant=tenant)]


async def write_at(redis: Redis, stream: str, entry: AuditEntry, entry_id: str) -> None:
    """An entry as if appended at the time `entry_id` names (a stream id is its time)."""
    fields: Any = entry.fields()  # redis-py's stub wants its own key and value types
    await redis.xadd(stream, fields, id=entry_id)


def everything(_entry: dict[str, Any]) -> bool:
    return True


async def all_pages(audit: AuditLog, tenant: str | None, limit: int) -> list[list[dict[str, Any]]]:
    pages: list[list[dict[str, Any]]] = []
    after: str | None = None
    while page := await audit.page(
        tenant=tenant, since_ms=None, until_ms=None, after=after, limit=limit, accept=everything
    ):
        pages.append(page)
        after = page[-1]["id"]
    return pages


async def test_a_tenant_flooding_its_stream_does_not_evict_another_tenants_history(
    redis: Redis, keys: Keys
) -> None:
    audit = AuditLog(redis, keys, maxlen=100)
    await audit.append([event("globex", f"g{i}") for i in range(3)])
    for burst in range(20):
        await audit.append([event("acme", f"a{burst}-{i}") for i in range(100)])
    # MAXLEN ~ trims whole stream nodes: about 100 entries stay, never fewer.
    assert 100 <= await redis.xlen(keys.audit_of("acme")) < 300
    assert await sessions_of(audit, "globex") == ["g0", "g1", "g2"]


async def test_entries_older_than_the_retention_go_on_the_tenants_next_append(
    redis: Redis, keys: Keys
) -> None:
    audit = AuditLog(redis, keys, maxlen=1000)  # the default retention: 30 days
    stream = keys.audit_of("acme")
    now_ms = int(time.time() * 1000)
    # Written 31 and 29 days ago (a stream id is the entry's time).
    await write_at(redis, stream, event("acme", "31 days"), f"{now_ms - 31 * DAY_MS}-0")
    await write_at(redis, stream, event("acme", "29 days"), f"{now_ms - 29 * DAY_MS}-0")
    await write_at(redis, keys.audit_of("globex"), event("globex", "g"), "1000-0")
    await audit.append([event("acme", "today")])
    assert await sessions_of(audit, "acme") == ["29 days", "today"]
    # Another tenant's stream waits for its own append (or its expiry, below).
    assert await sessions_of(audit, "globex") == ["g"]


async def test_a_tenant_with_no_append_for_the_whole_retention_loses_its_stream(
    redis: Redis, keys: Keys
) -> None:
    audit = AuditLog(redis, keys, maxlen=1000, retention_s=1)
    await audit.append([event("globex", "old")])
    assert await sessions_of(audit, None) == ["old"]
    stream = keys.audit_of("globex")
    assert 0 < await redis.pttl(stream) <= 1000  # it lapses a retention after its last append
    deadline = time.monotonic() + 10
    while await redis.exists(stream):
        assert time.monotonic() < deadline, "the stream outlived its retention"
        await asyncio.sleep(0.05)
    assert await sessions_of(audit, None) == []


async def test_an_admin_reads_every_tenant_merged_in_time_order_and_pages_without_gaps(
    redis: Redis, keys: Keys
) -> None:
    audit = AuditLog(redis, keys, maxlen=1000)
    # Two tenants' entries with the same id: written in the same millisecond, as one
    # pipeline often does.
    tie = f"{int(time.time() * 1000) - 1000}-0"
    for tenant in ("acme", "globex"):
        await write_at(redis, keys.audit_of(tenant), event(tenant, "tie"), tie)
    for round_ in range(8):
        batch = [event("acme", f"a{round_}"), event("globex", f"g{round_}")]
        await audit.append([*batch, AuditEntry("executed", session=f"s{round_}")])  # no tenant
        await asyncio.sleep(0.002)
    await asyncio.sleep(0.01)  # past Redis's current millisecond, which a page leaves out

    merged = [entry async for entry in audit.entries()]
    assert len(merged) == 2 + 8 * 3
    assert {e["tenant"] for e in merged} == {"acme", "globex", ""}
    order = [tuple(map(int, e["id"].split("-"))) for e in merged]
    assert order == sorted(order)
    assert [e["session"] for e in merged if e["tenant"] == "acme"][1:] == [
        f"a{i}" for i in range(8)
    ]

    for limit in (1, 2, 3, 100):
        pages = await all_pages(audit, None, limit)
        assert [e for page in pages for e in page] == merged  # no repeats, no gaps
        # Entries that share an id never straddle two pages: `after` would skip one.
        assert all(
            page[-1]["id"] != following[0]["id"] for page, following in itertools.pairwise(pages)
        )
    [first, *_] = await all_pages(audit, None, 1)
    assert [(e["id"], e["tenant"]) for e in first] == [(tie, "acme"), (tie, "globex")]


async def test_an_approvers_read_is_its_own_tenants_stream_only(redis: Redis, keys: Keys) -> None:
    audit = AuditLog(redis, keys, maxlen=1000)
    await audit.append([event("acme", "a1"), event("globex", "g1"), AuditEntry("executed")])
    await audit.append([event("globex", "g2"), event("acme", "a2")])
    await asyncio.sleep(0.01)
    assert await sessions_of(audit, "acme") == ["a1", "a2"]
    pages = await all_pages(audit, "acme", 1)
    assert [e["tenant"] for page in pages for e in page] == ["acme", "acme"]
    # A tenant's name, whatever characters it holds, names a stream of its own.
    names = ["acme", "acme:", "a:b", "a", "{acme}", "", "system", "audit-tenants"]
    assert len({keys.audit_of(name) for name in names} | {keys.audit_tenants}) == len(names) + 1
