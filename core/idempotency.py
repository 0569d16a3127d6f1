"""Requests sent with an `Idempotency-Key`: a retry is the same request.

The official SDKs send the same `Idempotency-Key` on every retry of a request, and retry
one that timed out: a chat request held for a person is exactly that. The first request
with a key claims it; a retry finds what became of the first (still running, its run, its
answer) and attaches to it, so a retry never opens a second approval or runs a tool twice.
Records are per requester (API key) and kept for `idempotency_retention_s`.
"""

from __future__ import annotations

import hashlib
import secrets
from dataclasses import dataclass

from core import scripts
from core.connect import RedisClient
from core.keys import Keys


@dataclass(frozen=True, slots=True)
class IdempotencyKey:
    """One requester's key, as stored, and this request's claim on it."""

    record: str
    """The Redis key of its record."""
    channel_id: str
    """The id whose wake-up channel tells waiters the record changed."""
    owner: str
    """This request's token: only the request that claimed the key records its outcome."""


AMBIGUOUS = "ambiguous"
"""`claim`'s answer when a retry cannot be matched to one first request (run it afresh)."""


@dataclass(frozen=True, slots=True)
class PriorRequest:
    """What became of the first request with a key."""

    fingerprint: str
    state: str
    """`running` or `done`."""
    until: float
    """A running request not done by then was abandoned."""
    log_id: str = ""
    """Its run, once it became one (a streamed request held for a person)."""
    conversation: str = ""
    """The conversation it belongs to (`X-Conversation-Id` of its answer, and its retries')."""
    status: int = 0
    """The HTTP status of its stored answer (`done`, not streamed)."""
    body: bytes = b""
    """Its stored answer (`done`, not streamed)."""

    @property
    def done(self) -> bool:
        return self.state == "done"


class IdempotentRequests:
    """Claims keys, records what became of the requests, and reads it back."""

    def __init__(self, redis: RedisClient, keys: Keys, retention_s: int) -> None:
        self.redis = redis
        self.keys = keys
        self.retention_s = retention_s
        self._claim = scripts.register(redis, scripts.CLAIM_IDEMPOTENCY_KEY)
        self._update_script = scripts.register(redis, scripts.UPDATE_IDEMPOTENCY_KEY)

    def key(self, scope: str, key: str) -> IdempotencyKey:
        """`scope` names the requester (see `GrantScope.key_part`)."""
        digest = hashlib.sha256(f"{scope}\n{key}".encode()).hexdigest()
        record = self.keys.idempotency(scope, digest)
        return IdempotencyKey(record, f"idem-{digest}", secrets.token_hex(8))

    async def claim(
        self,
        key: IdempotencyKey,
        fingerprint: str,
        until: float,
        conversation: str,
        *,
        first: bool = False,
    ) -> PriorRequest | str | None:
        """None when this request is the first with the key (it now owns it, in
        `conversation`); what became of the first; or `AMBIGUOUS`. `first`: the request says
        it is a first attempt (it is no retry, whatever the key held)."""
        first_flag = "1" if first else "0"
        outcome, *rest = await self._claim(
            keys=[key.record],
            args=[fingerprint, repr(until), self.retention_s, first_flag, key.owner, conversation],
        )
        if outcome == "new":
            return None
        if outcome == AMBIGUOUS:
            return AMBIGUOUS
        return _prior(dict(zip(rest[0][::2], rest[0][1::2], strict=True)))

    async def read(self, key: IdempotencyKey) -> PriorRequest | None:
        fields: dict[str, str] = await self.redis.hgetall(key.record)  # type: ignore[assignment]
        return _prior(fields) if fields else None

    async def attach_run(self, key: IdempotencyKey, log_id: str) -> None:
        """The request became a run: a retry re-attaches to it."""
        await self._update(key, {"log": log_id})

    async def finish(self, key: IdempotencyKey, status: int = 0, body: bytes = b"") -> None:
        """The request ended; `status` and `body` are its answer (none for a stream)."""
        await self._update(key, {"state": "done", "status": str(status), "body": body.decode()})

    async def forget(self, key: IdempotencyKey) -> None:
        """The request did not start (a 503): a retry runs afresh."""
        await self._update(key, {"until": "0"})  # counts as abandoned: claimed afresh

    async def _update(self, key: IdempotencyKey, fields: dict[str, str]) -> None:
        pairs = [item for field in fields.items() for item in field]
        channel = self.keys.wakeup_channel(key.channel_id)
        await self._update_script(keys=[key.record], args=[key.owner, channel, *pairs])


def _prior(fields: dict[str, str]) -> PriorRequest:
    return PriorRequest(
        fingerprint=fields.get("fingerprint", ""),
        state=fields.get("state", "running"),
        until=float(fields.get("until", "0")),
        log_id=fields.get("log", ""),
        conversation=fields.get("conversation", ""),
        status=int(fields.get("status") or 0),
        body=fields.get("body", "").encode(),
    )
