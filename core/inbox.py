"""`Inbox`: what others put for one owner, who takes it all at once, waiting when empty.

The one waiting primitive of held streams: a session's wake-ups (`core.wakeups.Waiter`)
and a run listener's events (`gateway.runs`) are both inboxes. Ten thousand held streams
keep one or two each, so an inbox holds a list and, only while its owner waits, one
future (an `asyncio.Queue` would carry three deques for its whole life, an
`asyncio.Event` one).
"""

from __future__ import annotations

import asyncio
from typing import Generic, TypeVar

T = TypeVar("T")


class Inbox(Generic[T]):
    """Items put by anyone on the loop; taken by one owner."""

    __slots__ = ("_future", "_items")

    def __init__(self) -> None:
        self._items: list[T] = []
        self._future: asyncio.Future[None] | None = None

    @property
    def empty(self) -> bool:
        return not self._items

    def put(self, item: T) -> None:
        self._items.append(item)
        if self._future is not None and not self._future.done():
            self._future.set_result(None)

    def clear(self) -> None:
        """Forget what was put so far."""
        self._items.clear()

    async def take(self, timeout: float) -> list[T]:  # noqa: ASYNC109 - bounded on purpose
        """Every item put since the last take (waiting for one), or [] after `timeout`
        seconds without any: what arrived together is taken together."""
        if not self._items:
            self._future = asyncio.get_running_loop().create_future()
            try:
                # asyncio.timeout, not wait_for: on 3.11 wait_for can swallow a cancellation
                # that races with the put, and a cancelled owner must stop.
                async with asyncio.timeout(timeout):
                    await self._future
            except TimeoutError:
                return []
            finally:
                self._future = None
        items, self._items = self._items, []
        return items
