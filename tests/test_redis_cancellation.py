"""The replica's background loops stop when cancelled, wherever the cancellation lands.

redis-py can lose a cancellation that lands mid-command (it closes the connection, and the
call fails as a broken connection, or is retried and returns). A loop of Redis calls that
tolerates Redis errors then goes on forever: a replica's shutdown, which cancels its
background loops and awaits them, hung on SIGTERM until it was killed. Each loop checks
whether its task is being cancelled on every round (`core.connect.stop_if_cancelled`).
"""

from __future__ import annotations

import asyncio
import itertools
from collections.abc import AsyncIterator, Callable, Coroutine
from typing import Any

import pytest

from core.connect import RedisClient, connect
from core.keys import Keys
from core.settings import Settings
from core.store import SessionStore
from core.wakeups import StatusPoller, Waiter
from gateway.sweeper import Sweeper
from tests.processes import RedisServer

_prefixes = itertools.count()
LoopFactory = Callable[[RedisClient, Keys], Coroutine[Any, Any, None]]


@pytest.fixture
async def redis(redis_server: RedisServer) -> AsyncIterator[RedisClient]:
    client = connect(Settings(redis_url=redis_server.url), "cancellation-test")
    yield client
    await client.aclose()


def sweeper(redis: RedisClient, keys: Keys) -> Coroutine[Any, Any, None]:
    store = SessionStore(redis, keys, retention_s=60)
    return Sweeper(store, "replica-a", interval_s=0).run_forever()


def status_poller(redis: RedisClient, keys: Keys) -> Coroutine[Any, Any, None]:
    poller = StatusPoller(redis, keys, interval_s=0)
    for n in range(50):
        poller.add(f"as_{n}", Waiter())
    return poller.run_forever()


@pytest.mark.parametrize("loop", [sweeper, status_poller])
async def test_a_background_loop_stops_when_cancelled_wherever_it_is(
    redis: RedisClient, loop: LoopFactory
) -> None:
    keys = Keys(f"cancel{next(_prefixes)}")
    for attempt in range(200):  # the cancellation lands at a different point each time
        task = asyncio.create_task(loop(redis, keys))
        await asyncio.sleep(0.0005 * (attempt % 20))
        task.cancel()
        done, _ = await asyncio.wait([task], timeout=2)
        assert done == {task}, f"attempt {attempt}: the loop went on after its cancellation"
        assert task.cancelled()
