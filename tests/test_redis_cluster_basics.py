"""On a real Redis Cluster (three masters, one replica each): the client `connect` opens in
cluster mode, what keeps a script or a transaction to one slot, and wake-ups over sharded
pub/sub that follow a session's slot to its new master when the old one fails over."""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import time
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from pathlib import Path

import pytest
from redis.asyncio import RedisCluster
from redis.commands.core import AsyncScript
from redis.exceptions import (
    ClusterCrossSlotError,
    CrossSlotTransactionError,
    RedisClusterException,
)

from core.connect import connect
from core.keys import Keys
from core.settings import Settings
from core.store import new_session_id
from core.wakeups import Waiter, WakeupHub, publish_command
from tests.redis_cluster import RedisCluster as LocalCluster
from tests.redis_cluster import redis_cluster_fixture  # noqa: F401 - until conftest.py has it

pytestmark = pytest.mark.cluster

# Wake a session's holder as the store's scripts will in cluster mode: SPUBLISH on the
# session's channel, which shares the session's hash tag and so its slot.
# KEYS[1] session hash
# ARGV[1] wake-up channel; ARGV[2] the new status
# Returns how many subscribers on this master received the wake-up.
WAKE = """
redis.call('HSET', KEYS[1], 'status', ARGV[2])
return redis.call('SPUBLISH', ARGV[1], ARGV[2])
"""

# KEYS[1], KEYS[2] two keys; ARGV[1] a value for both
# Returns 'ok'.
SET_BOTH = """
redis.call('SET', KEYS[1], ARGV[1])
redis.call('SET', KEYS[2], ARGV[1])
return 'ok'
"""

_prefixes = itertools.count()


def cluster_settings(cluster: LocalCluster) -> Settings:
    return Settings(redis_url=cluster.url, redis_cluster=True, key_prefix=f"c{next(_prefixes)}")


@pytest.fixture
async def client(redis_cluster: LocalCluster) -> AsyncIterator[RedisCluster]:
    redis = connect(cluster_settings(redis_cluster), "cluster-basics")
    assert isinstance(redis, RedisCluster)
    yield redis
    await redis.aclose()


@dataclass
class Holder:
    """A wake-up hub on the cluster, and what the store's scripts do to a session."""

    hub: WakeupHub
    keys: Keys
    wake: AsyncScript

    async def decide(self, session_id: str) -> int:
        """Mark the session decided and wake its holder as the store's scripts will; how
        many subscribers the session's master reached."""
        session, channel = self.keys.session(session_id), self.keys.wakeup_channel(session_id)
        reached: int = await self.wake(keys=[session], args=[channel, "decided"])
        return reached


@contextlib.asynccontextmanager
async def holding(cluster: LocalCluster) -> AsyncIterator[Holder]:
    settings = cluster_settings(cluster)
    redis = connect(settings, "cluster-hub")
    keys = Keys(settings.key_prefix)
    hub = WakeupHub(redis, keys, subscribe_timeout_s=settings.redis_timeout_s)
    await hub.start()
    try:
        yield Holder(hub, keys, redis.register_script(WAKE))
    finally:
        await hub.stop()
        await redis.aclose()


async def wakes_until(waiter: Waiter, condition: Callable[[], bool], within: float) -> int:
    """Follow the waiter's wake-ups until `condition` holds, as a holder re-reads at each
    (the hub wakes it when its subscription is lost, moved or confirmed); how many it had,
    counting one still unread."""
    wakes = 0
    async with asyncio.timeout(within):
        while not condition():
            wakes += await waiter.wait(within)
    return wakes + await waiter.wait(0)


async def test_connect_in_cluster_mode_writes_to_every_master_under_its_name(
    redis_cluster: LocalCluster, client: RedisCluster
) -> None:
    keys = Keys("basics")
    by_master: dict[int, str] = {}
    for n in range(100):
        key = keys.session(f"s{n}")
        by_master.setdefault(redis_cluster.master_of(key).port, key)
    assert len(by_master) == 3
    for key in by_master.values():
        await client.set(key, "here")
    assert [await client.get(key) for key in by_master.values()] == ["here"] * 3
    for master in redis_cluster.masters():
        assert "name=cluster-basics" in master.ask("CLIENT", "LIST")
    assert publish_command(client) == "SPUBLISH"


async def test_a_script_runs_on_the_keys_of_one_hash_tag_only(
    redis_cluster: LocalCluster, client: RedisCluster
) -> None:
    set_both = client.register_script(SET_BOTH)
    assert await set_both(keys=["a:{s1}", "b:{s1}"], args=["v"]) == "ok"
    # The client refuses keys of two slots before sending...
    with pytest.raises(RedisClusterException, match="same key slot"):
        await set_both(keys=["a:{s1}", "b:{s2}"], args=["v"])
    # ...and so would any master.
    master = redis_cluster.master_of("a:{s1}")
    with master.client() as node, pytest.raises(ClusterCrossSlotError):
        node.eval(SET_BOTH, 2, "a:{s1}", "b:{s2}", "v")


async def test_a_transaction_runs_on_the_keys_of_one_hash_tag_only(client: RedisCluster) -> None:
    async with client.pipeline(transaction=True) as pipe:
        for key in ("a:{t1}", "b:{t1}"):
            pipe.set(key, 1)
        assert await pipe.execute() == [True, True]
    async with client.pipeline(transaction=True) as pipe:
        for key in ("a:{t1}", "a:{t2}"):
            pipe.set(key, 1)
        with pytest.raises(CrossSlotTransactionError):
            await pipe.execute()
    # Without MULTI, a pipeline may span slots: the client sends each node its share.
    async with client.pipeline(transaction=False) as pipe:
        for key in ("a:{t1}", "a:{t2}", "a:{t3}"):
            pipe.set(key, 2)
        assert await pipe.execute() == [True, True, True]


async def test_a_wakeup_published_by_a_script_reaches_the_waiter(
    redis_cluster: LocalCluster,
) -> None:
    session_id = new_session_id()
    async with holding(redis_cluster) as holder:
        async with holder.hub.watch(session_id) as waiter:
            master = redis_cluster.master_of(holder.keys.session(session_id))
            assert holder.hub.confirmed_at(session_id) == master.address
            assert await holder.decide(session_id) == 1
            assert await waiter.wait(5)
        assert holder.hub.watched == 0 and holder.hub.confirmed_at(session_id) is None


async def test_a_wakeup_reaches_the_waiter_after_its_master_fails_over(
    redis_cluster: LocalCluster,
) -> None:
    session_id = new_session_id()
    async with holding(redis_cluster) as holder, holder.hub.watch(session_id) as waiter:
        old = redis_cluster.master_of(holder.keys.session(session_id))
        new = await asyncio.to_thread(redis_cluster.failover, old)
        # The old master revoked the subscription; the hub moved it to the new one, waking
        # the waiter (to re-read its session) as it did.
        moved = await wakes_until(
            waiter, lambda: holder.hub.confirmed_at(session_id) == new.address, within=10
        )
        assert moved >= 1 and holder.hub.connected
        started = time.monotonic()
        assert await holder.decide(session_id) == 1
        assert await waiter.wait(5)
        assert time.monotonic() - started < 1


async def test_a_wakeup_reaches_the_waiter_after_its_master_is_killed(tmp_path: Path) -> None:
    cluster = LocalCluster(tmp_path)  # its own: this one loses a node for good
    session_id = new_session_id()
    try:
        cluster.start()
        async with holding(cluster) as holder, holder.hub.watch(session_id) as waiter:
            old = cluster.master_of(holder.keys.session(session_id))
            replica = cluster.replica_of(old)
            cluster.kill(old)
            # The lost connection wakes the waiter; the replica is elected after the node
            # timeout, and the hub follows the session's slot there.
            moved = await wakes_until(
                waiter, lambda: holder.hub.confirmed_at(session_id) == replica.address, 30
            )
            assert moved >= 1 and holder.hub.connected
            assert await holder.decide(session_id) == 1
            assert await waiter.wait(5)
    finally:
        cluster.stop()
