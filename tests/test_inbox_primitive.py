"""`core.inbox.Inbox`, the one waiting primitive of held streams, and the `Waiter` built on it."""

from __future__ import annotations

import asyncio

import pytest

from core.inbox import Inbox
from core.wakeups import Waiter


async def test_what_arrived_together_is_taken_together_in_order() -> None:
    inbox: Inbox[int] = Inbox()
    inbox.put(1)
    inbox.put(2)
    assert await inbox.take(1.0) == [1, 2]
    assert inbox.empty


async def test_a_waiting_owner_wakes_on_the_first_put() -> None:
    inbox: Inbox[str] = Inbox()
    taking = asyncio.create_task(inbox.take(5.0))
    await asyncio.sleep(0)  # the owner waits now
    loop = asyncio.get_running_loop()
    started = loop.time()
    inbox.put("event")
    assert await taking == ["event"]
    assert loop.time() - started < 1.0


async def test_a_take_with_nothing_put_ends_empty_at_its_timeout() -> None:
    inbox: Inbox[int] = Inbox()
    loop = asyncio.get_running_loop()
    started = loop.time()
    assert await inbox.take(0.05) == []
    assert loop.time() - started >= 0.05


async def test_a_cancelled_owner_stops_and_a_later_put_is_kept() -> None:
    inbox: Inbox[int] = Inbox()
    taking = asyncio.create_task(inbox.take(5.0))
    await asyncio.sleep(0)
    taking.cancel()
    with pytest.raises(asyncio.CancelledError):
        await taking
    inbox.put(7)
    assert await inbox.take(0.01) == [7]


async def test_a_waiter_counts_many_wake_ups_since_its_last_wait_as_one() -> None:
    waiter = Waiter()
    for _ in range(1000):
        waiter.wake()
    assert await waiter.wait(1.0) is True
    assert await waiter.wait(0.01) is False  # nothing left over


async def test_a_cleared_waiter_forgets_earlier_wake_ups() -> None:
    waiter = Waiter()
    waiter.wake()
    waiter.clear()
    assert await waiter.wait(0.01) is False
