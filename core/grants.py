"""Standing approvals ("grants"), the conversation ids they are scoped to, and conversations
tainted by untrusted tool output.

A grant lets one requester (an API key) run one tool without asking again, in one
conversation, for a while. The conversation is named by an id the gateway issues
(`ConversationIds`): a keyed hash over the tenant, the requester and a random part,
so an id is only ever valid for the key it was issued to, and a client-chosen name
is only a label. Grant keys carry the requester too, so another key of the same
tenant that learns a conversation id gets nothing from it.
"""

from __future__ import annotations

import hashlib
import hmac
import secrets
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from core.audit import AuditEntry, AuditLog
from core.connect import RedisClient
from core.keys import Keys

_ID_PREFIX = "conv_"


@dataclass(frozen=True, slots=True)
class GrantScope:
    """Whose grants, in which conversation."""

    tenant: str
    requester: str
    conversation: str

    def key_part(self) -> str:
        # Hex keeps separators in tenant or key names from making two scopes one.
        return ":".join(part.encode().hex() for part in (self.tenant, self.requester)) + (
            f":{self.conversation}"
        )


class ConversationIds:
    """Issues and recognises the conversation ids grants are scoped to."""

    def __init__(self, secret: bytes) -> None:
        self._secret = secret

    @classmethod
    async def load(cls, redis: RedisClient, keys: Keys) -> ConversationIds:
        """With the deployment's secret, made by whichever process starts first."""
        await redis.set(keys.conversation_secret, secrets.token_hex(32), nx=True)
        secret: str = await redis.get(keys.conversation_secret)  # type: ignore[assignment]
        return cls(bytes.fromhex(secret))

    def issue(self, tenant: str, requester: str) -> str:
        """A new id, valid for this requester only."""
        nonce = secrets.token_hex(12)
        return f"{_ID_PREFIX}{nonce}{self._mac(tenant, requester, nonce)}"

    def recognise(self, claimed: str, tenant: str, requester: str) -> bool:
        """Whether `claimed` is an id this deployment issued to this requester."""
        body = claimed[len(_ID_PREFIX) :]
        if not claimed.startswith(_ID_PREFIX) or len(body) != 48:
            return False
        nonce, mac = body[:24], body[24:]
        return hmac.compare_digest(mac, self._mac(tenant, requester, nonce))

    def resolve(self, claimed: str, tenant: str, requester: str) -> tuple[str, str]:
        """(the id to use, the client's own label): a recognised id is kept; anything else
        gets a fresh id and is kept as a label (at most 128 characters)."""
        if self.recognise(claimed, tenant, requester):
            return claimed, ""
        return self.issue(tenant, requester), claimed[:128]

    def _mac(self, tenant: str, requester: str, nonce: str) -> str:
        message = "\n".join((tenant, requester, nonce)).encode()
        return hmac.new(self._secret, message, hashlib.sha256).hexdigest()[:24]


class ConversationTaint:
    """Where untrusted tool output went, beyond what a request's history shows: a client
    never sees the results of server-side tools, only what the model wrote after them.

    Two marks: the gateway-issued conversation (for clients that send its id back), and the
    messages the model wrote with untrusted output in its context (their text, and the ids
    of the client calls in them), so a history that carries one of them is tainted whatever
    conversation id it comes with.
    """

    MAX_CHECKED = 32
    """How many of a history's latest assistant texts and call ids are looked up."""

    def __init__(self, redis: RedisClient, keys: Keys, ttl_s: int) -> None:
        self.redis = redis
        self.keys = keys
        self.ttl_s = ttl_s

    async def mark(self, scope: GrantScope) -> None:
        await self.redis.set(self.keys.taint(scope.key_part()), "1", ex=self.ttl_s)

    async def mark_output(self, tenant: str, text: str, call_ids: Sequence[str]) -> None:
        """The model wrote `text` and these client calls with untrusted output in context."""
        digests = [_digest(part) for part in (text, *call_ids) if part]
        async with self.redis.pipeline(transaction=False) as pipe:
            for digest in digests:
                pipe.set(self.keys.tainted_output(tenant, digest), "1", ex=self.ttl_s)
            await pipe.execute()

    async def holds(self, scope: GrantScope, messages: Sequence[Mapping[str, Any]]) -> bool:
        """Whether the conversation, or a message of this history, carries untrusted output."""
        parts = [
            part
            for message in messages
            if message.get("role") == "assistant"
            for part in _assistant_parts(message)
        ][-self.MAX_CHECKED :]
        keys = [self.keys.taint(scope.key_part())]
        keys += [self.keys.tainted_output(scope.tenant, _digest(part)) for part in parts]
        return bool(await self.redis.exists(*keys))


def _assistant_parts(message: Mapping[str, Any]) -> list[str]:
    content = message.get("content")
    parts = [content] if isinstance(content, str) and content else []
    for call in message.get("tool_calls") or ():
        if isinstance(call, Mapping) and isinstance(call.get("id"), str):
            parts.append(call["id"])
    return parts


def _digest(text: str) -> str:
    return hashlib.sha256(text.encode()).hexdigest()


@dataclass(frozen=True, slots=True)
class Grant:
    """A standing approval of `tool` by `grantor` for `ttl_s`, for arguments hashing to
    `sha256` ("*": any arguments)."""

    tool: str
    sha256: str
    grantor: str
    ttl_s: int


class Grants:
    """Reads and writes grants in Redis."""

    def __init__(self, redis: RedisClient, keys: Keys) -> None:
        self.redis = redis
        self.keys = keys

    async def covering(
        self, scope: GrantScope, calls: Sequence[tuple[str, str, str]], *, exact_only: bool
    ) -> Mapping[str, str]:
        """For `(call id, tool, arguments hash)` calls: call id -> who granted it, for
        each call a grant covers (one for exactly these arguments, or, unless
        `exact_only`, one for any)."""
        if not calls:
            return {}
        part = scope.key_part()
        async with self.redis.pipeline(transaction=False) as pipe:
            for _call_id, tool, sha in calls:
                pipe.get(self.keys.grant(part, tool, sha))
                pipe.get(self.keys.grant(part, tool, "*"))
            found: list[str | None] = await pipe.execute()
        covered = {}
        for index, (call_id, _tool, _sha) in enumerate(calls):
            grantor = found[2 * index] or (None if exact_only else found[2 * index + 1])
            if grantor:
                covered[call_id] = grantor
        return covered

    async def add(
        self,
        scope: GrantScope,
        grants: Sequence[Grant],
        audit: AuditLog,
        entries: Iterable[AuditEntry],
    ) -> None:
        """Store grants in `scope` and append their audit `entries`, in one round trip."""
        if not grants:
            return
        part = scope.key_part()
        async with self.redis.pipeline(transaction=False) as pipe:
            for grant in grants:
                key = self.keys.grant(part, grant.tool, grant.sha256)
                pipe.set(key, grant.grantor, ex=grant.ttl_s)
            audit.add_to(pipe, entries)
            await pipe.execute()
