"""Signed webhooks: approval events POSTed to the receivers in `Settings.webhooks`.

`WebhookSender.deliver()` (the outbox relay's way in) builds an event, serializes it once
and queues one delivery per target subscribed to its type; a few background tasks POST the
deliveries with one shared `httpx.AsyncClient`, each attempt signed afresh
(`X-Gateway-Signature`, see `sign`). `emit()` is the same without waiting for the end.

    2xx                              delivered
    network error, 408, 429, 5xx     retried after a full-jitter exponential backoff
                                     (or the response's `Retry-After` seconds)
    any other status                 failed, not retried
    `max_attempts` attempts made     failed, given up

Delivery is at-least-once: an attempt whose response is lost is sent again, so receivers
de-duplicate by event id (`X-Gateway-Event-Id`). The gateway's own events come through
`deliver()`, from the sessions' durable outboxes (`core.outbox`): an event still queued or
retrying when its replica dies stays in Redis, and another replica delivers it again,
with the same id. (`emit()` alone keeps deliveries in this process's memory only.)
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import hmac
import random
import re
import time
import uuid
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlsplit

import httpx
import orjson
import structlog

from core.settings import WebhookTarget

log = structlog.stdlib.get_logger(__name__)

USER_AGENT = "approval-gateway-webhooks"
RETRIED_STATUSES = frozenset({408, 429})
"""Besides every 5xx: statuses that say "later", not "never"."""
DELIVERY_TASKS = 4
"""Concurrent POSTs; a delivery waiting to retry holds none of them."""
_DIGITS = re.compile(r"[0-9]{1,12}")


def sign(secret: bytes, timestamp: int, body: bytes) -> str:
    """The `X-Gateway-Signature` value: `t=<unix>,v1=<hex HMAC-SHA256(secret, b"<t>." + body)>`."""
    return f"t={timestamp},v1={_digest(secret, timestamp, body)}"


def verify(
    secret: bytes, header: str, body: bytes, tolerance_s: int = 300, now: float | None = None
) -> bool:
    """Whether `header` signs `body` with `secret` at a time within `tolerance_s` of `now`.

    Any one of several `v1=` entries may match (a sender rotating keys signs with each).
    A malformed header is `False`, never an exception.
    """
    timestamps, signatures = [], []
    for item in header.split(","):
        key, _, value = item.strip().partition("=")
        if key == "t":
            timestamps.append(value)
        elif key == "v1":
            signatures.append(value)
    if len(timestamps) != 1 or not _DIGITS.fullmatch(timestamps[0]):
        return False
    timestamp = int(timestamps[0])
    if abs((time.time() if now is None else now) - timestamp) > tolerance_s:
        return False
    expected = _digest(secret, timestamp, body)
    # A list, not a generator: every entry is compared, whichever one matches.
    return any([s.isascii() and hmac.compare_digest(expected, s) for s in signatures])


def _digest(secret: bytes, timestamp: int, body: bytes) -> str:
    return hmac.new(secret, b"%d." % timestamp + body, hashlib.sha256).hexdigest()


class WebhooksBusy(RuntimeError):
    """An event could not be queued for every target (stopping, or the queue is full)."""


@dataclass(eq=False)
class Delivery:
    """One event on its way to one target."""

    target: WebhookTarget
    event_id: str
    event_type: str
    body: bytes
    attempts: int = 0
    retry: asyncio.TimerHandle | None = None
    done: asyncio.Future[None] | None = None
    """Set when the delivery ends, delivered or not (for `deliver()`)."""

    def fields(self) -> dict[str, str]:
        """What a log line says of it."""
        return {
            "event_id": self.event_id,
            "type": self.event_type,
            "target": shown(self.target.url),
        }


class WebhookSender:
    """Delivers events to the targets subscribed to them, in the background, with retries.

    `start()` in the app's lifespan, `emit()` from request handlers, `stop()` at shutdown.
    """

    def __init__(
        self,
        targets: list[WebhookTarget],
        max_attempts: int,
        *,
        base_delay_s: float = 0.5,
        max_delay_s: float = 60.0,
        timeout_s: float = 5.0,
        queue_size: int = 10_000,
    ) -> None:
        self.targets = targets
        self.max_attempts = max_attempts
        self.base_delay_s = base_delay_s
        self.max_delay_s = max_delay_s
        self.timeout_s = timeout_s
        self.queue_size = queue_size
        """Bound on `pending`; `emit()` drops deliveries beyond it."""
        self.delivered = 0
        """Deliveries a target answered with a 2xx."""
        self.failed = 0
        """Deliveries that ended without a 2xx: not retried, or out of attempts."""
        self.retried = 0
        """Attempts that failed and were scheduled to be tried again."""
        self.pending = 0
        """Deliveries queued, in flight or waiting to retry."""
        self.dropped = 0
        """Deliveries lost here: queue full, sender stopped, or still pending when stop() ended."""
        self._ready: asyncio.Queue[Delivery] = asyncio.Queue()
        self._waiting: set[Delivery] = set()
        self._open: set[Delivery] = set()
        """Every delivery not finished yet."""
        self._idle = asyncio.Event()
        self._idle.set()
        self._tasks: list[asyncio.Task[None]] = []
        self._client: httpx.AsyncClient | None = None
        self._stopped = False

    async def start(self) -> None:
        """Open the HTTP client and start the delivery tasks; deliveries emitted so far go out."""
        if self._client is not None or self._stopped:
            return
        self._client = client = httpx.AsyncClient(
            timeout=self.timeout_s, headers={"User-Agent": USER_AGENT}
        )
        self._tasks = [
            asyncio.create_task(self._deliver_forever(client), name=f"webhooks-{n}")
            for n in range(DELIVERY_TASKS)
        ]

    async def stop(self, grace_s: float) -> None:
        """Take no more events; deliver what is pending for up to `grace_s`; drop the rest."""
        if self._stopped:
            return
        self._stopped = True
        if self._client is not None:
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(grace_s):
                    await self._idle.wait()
        for task in self._tasks:
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        for delivery in self._waiting:
            assert delivery.retry is not None
            delivery.retry.cancel()
        if self.pending:
            log.warning("webhooks_dropped_at_shutdown", deliveries=self.pending)
            self.dropped += self.pending
            self.pending = 0
        for delivery in self._open:  # queued, in flight or waiting: `deliver()` must not hang
            if delivery.done is not None:
                delivery.done.cancel()
        self._open.clear()
        if self._client is not None:
            await self._client.aclose()

    def outcomes(self) -> dict[str, int]:
        """How attempts ended so far: `delivered`, `retried` and `failed` (the metrics')."""
        return {"delivered": self.delivered, "retried": self.retried, "failed": self.failed}

    async def deliver(self, event_id: str, event_type: str, data: dict[str, Any]) -> None:
        """Deliver an event with this id to every target subscribed to its type; return once
        each delivery ended (delivered, refused, or out of attempts). Cancelled (the sender
        stopped), it was not delivered everywhere: the caller keeps it to try again."""
        subscribed = sum(1 for target in self.targets if event_type in target.events)
        done = [future for future in self._queue(event_id, event_type, data) if future]
        await asyncio.gather(*done)
        if len(done) < subscribed:
            raise WebhooksBusy(f"webhook {event_id}: the sender is stopped or its queue full")

    def emit(self, event_type: str, data: dict[str, Any]) -> str | None:
        """Queue the event for every target subscribed to `event_type`; its id, or None if none.

        Synchronous, never blocks and never raises: unserializable data, a full queue or a
        stopped sender is logged and the delivery dropped. Call it from the event loop's thread.
        """
        event_id = f"evt_{uuid.uuid4().hex}"
        return event_id if self._queue(event_id, event_type, data, awaited=False) else None

    def _queue(
        self, event_id: str, event_type: str, data: dict[str, Any], *, awaited: bool = True
    ) -> list[asyncio.Future[None] | None]:
        """One delivery per subscribed target; for each one queued, the future its end
        sets (None when nobody will await it)."""
        targets = [target for target in self.targets if event_type in target.events]
        if not targets:
            return []
        event = {"id": event_id, "type": event_type, "created": int(time.time()), "data": data}
        try:
            body = orjson.dumps(event)
        except orjson.JSONEncodeError as error:
            log.error(
                "webhook_unserializable", event_id=event_id, type=event_type, error=str(error)
            )
            return []
        queued = []
        for target in targets:
            if self._stopped or self.pending >= self.queue_size:
                reason = "sender stopped" if self._stopped else "queue full"
                log.warning(
                    "webhook_dropped", event_id=event_id, target=shown(target.url), reason=reason
                )
                self.dropped += 1
                continue
            self.pending += 1
            self._idle.clear()
            done = asyncio.get_running_loop().create_future() if awaited else None
            delivery = Delivery(target, event_id, event_type, body, done=done)
            self._open.add(delivery)
            self._ready.put_nowait(delivery)
            queued.append(done)
        return queued

    def backoff_s(self, attempts: int) -> float:
        """Wait before the next attempt after `attempts` failed ones: full jitter."""
        ceiling = min(self.max_delay_s, self.base_delay_s * 2 ** min(attempts - 1, 32))
        return random.uniform(0.0, ceiling)

    async def _deliver_forever(self, client: httpx.AsyncClient) -> None:
        while True:
            delivery = await self._ready.get()
            try:
                await self._attempt(client, delivery)
            except Exception:  # e.g. an invalid URL: retrying would not help
                log.exception("webhook_failed", **delivery.fields())
                self._finish(delivery, delivered=False)

    async def _attempt(self, client: httpx.AsyncClient, delivery: Delivery) -> None:
        delivery.attempts += 1
        secret = delivery.target.secret.get_secret_value().encode()
        headers = {
            "Content-Type": "application/json",
            "X-Gateway-Event-Id": delivery.event_id,
            "X-Gateway-Event-Type": delivery.event_type,
            "X-Gateway-Signature": sign(secret, int(time.time()), delivery.body),
        }
        try:
            response = await client.post(
                delivery.target.url, content=delivery.body, headers=headers
            )
        except httpx.TransportError as error:
            self._retry_or_give_up(delivery, f"{type(error).__name__}: {error}", None)
            return
        status = response.status_code
        if 200 <= status < 300:
            self._finish(delivery, delivered=True)
        elif status >= 500 or status in RETRIED_STATUSES:
            self._retry_or_give_up(delivery, f"HTTP {status}", _retry_after_s(response))
        else:
            log.warning("webhook_refused", **delivery.fields(), status=status)  # not retried
            self._finish(delivery, delivered=False)

    def _retry_or_give_up(self, delivery: Delivery, reason: str, retry_after: float | None) -> None:
        if delivery.attempts >= self.max_attempts:
            log.warning(
                "webhook_given_up", **delivery.fields(), attempts=delivery.attempts, reason=reason
            )
            self._finish(delivery, delivered=False)
            return
        if retry_after is None:
            delay = self.backoff_s(delivery.attempts)
        else:
            delay = min(retry_after, self.max_delay_s)
        log.info("webhook_retry", **delivery.fields(), reason=reason, delay_s=round(delay, 3))
        self.retried += 1
        self._waiting.add(delivery)
        delivery.retry = asyncio.get_running_loop().call_later(delay, self._requeue, delivery)

    def _requeue(self, delivery: Delivery) -> None:
        self._waiting.discard(delivery)
        self._ready.put_nowait(delivery)

    def _finish(self, delivery: Delivery, *, delivered: bool) -> None:
        if delivered:
            self.delivered += 1
        else:
            self.failed += 1
        self.pending -= 1
        self._open.discard(delivery)
        if self.pending == 0:
            self._idle.set()
        if delivery.done is not None and not delivery.done.done():
            delivery.done.set_result(None)


def shown(url: str) -> str:
    """A receiver as logs show it: scheme and host only (a URL's user info, path or query
    can carry a credential, as capability URLs do)."""
    parts = urlsplit(url)
    return f"{parts.scheme}://{parts.netloc.rpartition('@')[2]}"


def _retry_after_s(response: httpx.Response) -> float | None:
    """`Retry-After` in seconds; None when absent or an HTTP date (the backoff applies)."""
    value = response.headers.get("Retry-After", "").strip()
    return float(value) if _DIGITS.fullmatch(value) else None
