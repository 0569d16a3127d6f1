"""What `watch` waits on: feed events and typed lines, in arrival order, put by two threads.

`FeedFollower` reads the approvals feed and `read_lines` reads stdin; both put into one
`Inbox`, which `Watch` reads from its own thread.
"""

from __future__ import annotations

import queue
import threading
import time
from collections import deque
from dataclasses import dataclass
from typing import TextIO

from gateway.approvals_cli.client import (
    RECONNECT_S,
    ApiError,
    CliError,
    FeedEvent,
    Gateway,
    Unreachable,
)


@dataclass(frozen=True)
class Typed:
    """One line typed on stdin; `None` when stdin ended."""

    text: str | None


@dataclass(frozen=True)
class Notice:
    """Something about the feed itself, for stderr."""

    text: str


@dataclass(frozen=True)
class FeedFailed:
    """The feed cannot go on (its key was refused): watch ends with this error."""

    error: CliError


FeedItem = FeedEvent | Notice | FeedFailed


class EndOfInput(Exception):
    """stdin ended: nobody is left to answer, so watch stops."""


class Inbox:
    """What watch waits on, in arrival order: feed items and typed lines, put by threads."""

    def __init__(self) -> None:
        self._queue: queue.Queue[FeedItem | Typed] = queue.Queue()
        self._held: deque[FeedItem] = deque()

    def put(self, item: FeedItem | Typed) -> None:
        self._queue.put(item)

    def next_feed_item(self) -> FeedItem:
        """The next feed item; lines typed meanwhile answer nothing and are dropped."""
        if self._held:
            return self._held.popleft()
        while True:
            item = self._queue.get()
            if not isinstance(item, Typed):
                return item
            if item.text is None:
                raise EndOfInput

    def next_line(self) -> str:
        """The next typed line; feed items that come first are kept for later."""
        while True:
            item = self._queue.get()
            if not isinstance(item, Typed):
                self._held.append(item)
            elif item.text is None:
                raise EndOfInput
            else:
                return item.text

    def drop_typed_ahead(self) -> None:
        """Forget lines typed before a question is shown: no answer counts before it."""
        while True:
            try:
                item = self._queue.get_nowait()
            except queue.Empty:
                return
            if not isinstance(item, Typed):
                self._held.append(item)
            elif item.text is None:
                raise EndOfInput


class FeedFollower(threading.Thread):
    """Reads the approvals feed into an `Inbox`; after a network error it re-attaches with
    the id of the last event it got, and the gateway sends every event after that one."""

    def __init__(self, gateway: Gateway, inbox: Inbox) -> None:
        super().__init__(name="approvals-feed", daemon=True)
        self.gateway = gateway
        self.inbox = inbox
        self.last_event_id = ""
        self.failures = 0

    def run(self) -> None:
        while True:
            try:
                self._follow()
                reason = "the gateway ended the feed"
            except Unreachable as error:
                reason = str(error)
            except ApiError as error:
                if error.status < 500:
                    self.inbox.put(FeedFailed(error))
                    return
                reason = f"{error.status} {error.code}: {error.message}"
            except Exception as error:  # the thread's boundary: watch must hear of it
                self.inbox.put(FeedFailed(CliError(f"the feed broke: {error!r}")))
                return
            wait = RECONNECT_S[min(self.failures, len(RECONNECT_S) - 1)]
            if self.failures == 0:
                where = self.last_event_id or "the start"
                self.inbox.put(Notice(f"feed interrupted ({reason}); re-attaching after {where}"))
            self.failures += 1
            time.sleep(wait)

    def _follow(self) -> None:
        with self.gateway.feed(self.last_event_id) as events:
            for event in events:
                if self.failures:
                    self.inbox.put(Notice(f"feed re-attached after {self.last_event_id}"))
                    self.failures = 0
                self.last_event_id = event.id or self.last_event_id
                if event.kind == "error":  # the stream ends after it; re-attach then
                    message = event.entry.get("error", {}).get("message", "")
                    self.inbox.put(Notice(f"the feed reports an error: {message}"))
                self.inbox.put(event)


def read_lines(stream: TextIO, inbox: Inbox) -> None:
    """Put each line of `stream` into `inbox`, then `Typed(None)` at its end."""
    for line in stream:
        inbox.put(Typed(line.rstrip("\r\n")))
    inbox.put(Typed(None))
