"""Retries on `POST /v1/chat/completions`: a retried request is the same request.

A request is known as a retry by its `Idempotency-Key` header, or, without one, by the
`X-Stainless-Retry-Count` header the official SDKs (Python and JS) put on every attempt:
attempt 0 is a new request, a later attempt with the same body from the same key (and the
same `X-Conversation-Id`, if any) is a retry of it. Two such requests at once cannot be told
apart: their retries then run as requests of their own rather than risk taking each other's
answer (send an `Idempotency-Key` to avoid that).

The first request runs and records what became of it (`core.idempotency`). A retry attaches
to it: a non-streamed retry waits for the first one's answer and returns it; a streamed
retry follows the first one's run from its approval notice on. A retry never opens a second
approval or runs a tool twice. The same `Idempotency-Key` with another body is
`409 idempotency_key_reused`.
"""

from __future__ import annotations

import hashlib
import time
from typing import Any

import orjson
from starlette.requests import Request
from starlette.responses import Response

from core.errors import DecisionConflict, GatewayError, IdempotencyKeyReused, Unavailable
from core.grants import GrantScope
from core.idempotency import IdempotencyKey, PriorRequest
from gateway.auth import Principal
from gateway.follow import follow_run
from gateway.replica import Replica
from gateway.runs import RunRegistry
from gateway.sse import StreamSlots

HEADER = "idempotency-key"
SDK_ATTEMPT_HEADER = "x-stainless-retry-count"
MAX_KEY_CHARS = 255


class Retry:
    """One request's idempotency key, claimed or found taken."""

    def __init__(
        self, replica: Replica, key: IdempotencyKey, fingerprint: str, *, first: bool
    ) -> None:
        self.replica = replica
        self.key = key
        self.fingerprint = fingerprint
        self.first = first
        """The request says it is a first attempt (an SDK's attempt 0)."""

    @classmethod
    def of(
        cls, replica: Replica, principal: Principal, request: Request, body: Any
    ) -> Retry | None:
        """How the request may be retried, or None when nothing would tell its retries."""
        explicit = request.headers.get(HEADER, "").strip()[:MAX_KEY_CHARS]
        attempt = request.headers.get(SDK_ATTEMPT_HEADER, "").strip()
        if not explicit and not (attempt.isascii() and attempt.isdigit()):
            return None
        fingerprint = hashlib.sha256(orjson.dumps(body, option=orjson.OPT_SORT_KEYS)).hexdigest()
        scope = GrantScope(principal.tenant, principal.name, "").key_part()
        # An SDK attempt is known by its body, within the conversation the client names.
        conversation = request.headers.get("x-conversation-id", "")[:128]
        name = f"key:{explicit}" if explicit else f"sdk:{conversation}:{fingerprint}"
        first = not explicit and int(attempt) == 0
        return cls(replica, replica.idempotency.key(scope, name), fingerprint, first=first)

    async def claim(self, conversation: str) -> PriorRequest | None:
        """None when this request runs (the first with the key, or a retry that cannot be
        matched to one first request), else what became of the first."""
        settings = self.replica.settings
        # How long the first may take before a retry counts it as abandoned.
        bound = settings.approval_timeout_s + settings.tool_result_timeout_s
        until = time.time() + bound + 2 * settings.upstream_timeout_s
        prior = await self.replica.idempotency.claim(
            self.key, self.fingerprint, until, conversation, first=self.first
        )
        if isinstance(prior, str):  # ambiguous: run as a request of its own, unrecorded
            return None
        if prior is not None and prior.fingerprint != self.fingerprint:
            raise IdempotencyKeyReused(
                "this Idempotency-Key was sent before with a different request"
            )
        return prior

    async def answered(self, status: int, body: bytes) -> None:
        """The first request's answer, for its retries (a 503 is not kept: retry afresh)."""
        await self.replica.idempotency.finish(self.key, status, body)

    async def failed(self, error: GatewayError) -> None:
        if isinstance(error, Unavailable):
            await self.replica.idempotency.forget(self.key)
        else:
            await self.answered(error.status_code, orjson.dumps(error.body()))

    async def became_run(self, log_id: str) -> None:
        await self.replica.idempotency.attach_run(self.key, log_id)

    async def ended(self) -> None:
        await self.replica.idempotency.finish(self.key)

    async def repeat(
        self, runs: RunRegistry, slots: StreamSlots, prior: PriorRequest, stream: bool
    ) -> Response:
        """The answer to a retry: the first request's answer, or its run."""
        prior = await self._settled(prior, need_run=stream)
        if stream:
            if not prior.log_id:
                raise DecisionConflict(
                    "the first request with this Idempotency-Key streamed its answer without "
                    "waiting for a decision; a streamed answer is not kept, send a new request"
                )
            model = self.replica.settings.upstream_model
            return await follow_run(runs, slots, prior.log_id, 0, model)
        if not prior.done:
            raise Unavailable("the first request with this Idempotency-Key is still running")
        return Response(prior.body, prior.status, media_type="application/json")

    async def _settled(self, prior: PriorRequest, *, need_run: bool) -> PriorRequest:
        """Wait until the first request is done (or, for a stream, became a run), at most
        until it counts as abandoned."""
        replica = self.replica
        async with replica.hub.watch(self.key.channel_id) as waiter:
            while not (prior.done or (need_run and prior.log_id)):
                left = prior.until - time.time()
                if left <= 0:
                    break
                await waiter.wait(min(left, replica.settings.reread_interval_s))
                prior = await replica.idempotency.read(self.key) or prior
        return prior
