"""Standing approvals ("grants") and the conversation ids they are scoped to.

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
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

from redis.asyncio import Redis
from redis.asyncio.client import Pipeline

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
    async def load(cls, redis: Redis, keys: Keys) -> ConversationIds:
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


class Grants:
    """Reads and writes grants in Redis."""

    def __init__(self, redis: Redis, keys: Keys) -> None:
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

    def add_to(
        self, pipe: Pipeline, scope: GrantScope, tool: str, sha: str, grantor: str, ttl_s: int
    ) -> None:
        """Queue a grant on a pipeline another write goes out on."""
        pipe.set(self.keys.grant(scope.key_part(), tool, sha), grantor, ex=ttl_s)
