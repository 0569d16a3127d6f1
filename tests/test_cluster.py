"""The scale-out and fault tests on a real Redis Cluster (three masters, one replica each).

Replicas and workers run with GATEWAY_REDIS_CLUSTER; held streams go through the shipped
nginx configuration; masters are failed over while sessions are held.
"""

from __future__ import annotations

import concurrent.futures
import time
from pathlib import Path

import httpx
import pytest

from core.keys import Keys
from tests.clients import HeldStream, decide, hold, reattach, text_of
from tests.conftest import Stack, StackFactory
from tests.redis_cluster import (
    RedisCluster,
    redis_cluster_fixture,  # noqa: F401 - the `redis_cluster` fixture
)

pytestmark = pytest.mark.cluster


def _cluster_stack(
    make_stack: StackFactory, cluster: RedisCluster, replicas: int = 3, **settings: str
) -> Stack:
    return make_stack(replicas=replicas, workers=2, redis=cluster, lease_s="1.5", **settings)


def _hold(url: str, count: int, word: str) -> tuple[list[HeldStream], list[str]]:
    held = [HeldStream(url, f"getStringLength of '{word}{n}'") for n in range(count)]
    return held, [stream.wait_pending()["id"] for stream in held]


def _assert_answered(held: list[HeldStream], word: str) -> None:
    """Every stream `_hold` opened ended with the model's answer to its own call."""
    for n, stream in enumerate(held):
        assert stream.wait().text == f"getStringLength returned {len(f'{word}{n}')}."


def _decide_through_settling(url: str, session_id: str, kind: str = "approve") -> int:
    """Decide; while the cluster settles after a failover a call may get 503: try again."""
    deadline = time.monotonic() + 20
    while True:
        status = decide(url, session_id, kind).status_code
        if status != 503 or time.monotonic() > deadline:
            return status
        time.sleep(0.2)


def test_sessions_spread_over_every_master_and_all_finish_through_nginx(
    make_stack: StackFactory, redis_cluster: RedisCluster
) -> None:
    stack = _cluster_stack(make_stack, redis_cluster)
    balancer = stack.add_nginx()
    held, ids = _hold(balancer, 24, "spread")
    keys = [Keys.of(stack.prefix, cluster=True).session(session_id) for session_id in ids]
    assert len({redis_cluster.master_of(key).port for key in keys}) == 3
    listed = httpx.get(f"{balancer}/v1/approvals", params={"limit": 100}).json()["data"]
    assert {s["id"] for s in listed} == set(ids)  # the index shards, merged
    with concurrent.futures.ThreadPoolExecutor(8) as pool:
        statuses = list(pool.map(lambda i: decide(balancer, i, "approve").status_code, ids))
    assert statuses == [200] * len(ids)
    _assert_answered(held, "spread")


def test_a_master_failed_over_while_sessions_are_held_loses_nothing(
    make_stack: StackFactory, redis_cluster: RedisCluster
) -> None:
    stack = _cluster_stack(make_stack, redis_cluster, replicas=2)
    first, second = stack.replicas
    held, ids = _hold(first.url, 12, "failover")
    keys = {i: Keys.of(stack.prefix, cluster=True).session(i) for i in ids}
    victim = redis_cluster.master_of(keys[ids[0]])
    on_victim = [i for i in ids if redis_cluster.master_of(keys[i]).port == victim.port]
    promoted = redis_cluster.failover(victim)
    assert all(redis_cluster.master_of(keys[i]).port == promoted.port for i in on_victim)
    # Every held session is still pending, and deciding each (on the other replica) wakes
    # its holder over the promoted master's sharded pub/sub.
    for session_id in ids:
        assert _decide_through_settling(second.url, session_id) == 200
    _assert_answered(held, "failover")


def test_a_killed_replica_hands_its_run_to_another_on_the_cluster(
    make_stack: StackFactory, redis_cluster: RedisCluster
) -> None:
    stack = _cluster_stack(make_stack, redis_cluster, replicas=2)
    doomed, survivor = stack.replicas
    session_id, notice_id = hold(doomed.url, "getStringLength of 'clustered'")
    doomed.process.kill()
    assert decide(survivor.url, session_id, "approve").status_code == 200
    rest = reattach(survivor.url, session_id, notice_id)
    assert int(rest[0][0]) == notice_id + 1 and "resumed" in rest[0][1]
    assert text_of(rest) == "getStringLength returned 9."
    assert rest[-1][1] == "[DONE]"


def test_a_worker_runs_each_approved_call_once_on_the_cluster(
    make_stack: StackFactory, redis_cluster: RedisCluster, tmp_path: Path
) -> None:
    stack = _cluster_stack(make_stack, redis_cluster, replicas=1)
    ledger = tmp_path / "ledger.txt"
    held = [
        HeldStream(stack.replicas[0].url, f"chargeCard '{ledger}' 'c{n}' 0.1") for n in range(6)
    ]
    for stream in held:
        assert (
            decide(stack.replicas[0].url, stream.wait_pending()["id"], "approve").status_code == 200
        )
    for stream in held:
        stream.wait()
    starts = sorted(line for line in ledger.read_text().splitlines() if line.startswith("start"))
    assert starts == [f"start c{n}" for n in range(6)]
