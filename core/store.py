"""Approval sessions in Redis: create, read, list, and the transitions (see `core.scripts`)."""

from __future__ import annotations

import heapq
import itertools
import secrets
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Literal

import orjson

from core import scripts
from core.audit import AuditEntry, AuditLog
from core.connect import RedisClient, RedisPipeline
from core.errors import (
    DecisionConflict,
    HashMismatch,
    SessionExpired,
    SessionNotFound,
    UnknownToolCall,
)
from core.keys import Keys
from core.outbox import Outbox
from core.records import (
    ApprovalSession,
    CallStatus,
    Decision,
    DecisionKind,
    SessionRecord,
    SessionStatus,
    ToolCallView,
    ToolResult,
    arguments_sha256,
    new_session_fields,
    sources_of,
)

DecideOutcome = Literal["decided", "partial", "repeat"]
"""What `SessionStore.decide_calls` did: settled the session, left some calls pending, or
found every item a repeat."""
StartOutcome = Literal["run", "unknown", "exhausted", "skip"]
"""What `SessionStore.start_call` did (`START_CALL`): the call may run, or was settled as
`unknown` / `failed` (attempts exhausted), or is not the worker's to run."""
_DecideReply = Literal[
    "ok", "repeat", "conflict", "hash_mismatch", "unknown_call", "expired", "not_found"
]
_MoveReply = Literal["ok", "refused", "not_found"]
"""The first element of what `BEGIN_RUN` and `TRANSITION` return."""


def new_session_id() -> str:
    """An unguessable session id (128 random bits)."""
    return "as_" + secrets.token_hex(16)


@dataclass(frozen=True, slots=True)
class Claim:
    """What `SessionStore.begin_run` found and did."""

    queued: list[str] | None
    """The call ids to queue now; None when the claim was refused."""
    status: SessionStatus
    """The session's status when asked: a claim of an `expired` one runs no call."""
    record: SessionRecord | None
    """The session after the claim; None only when it was refused as still pending."""


class SessionStore:
    """Reads and changes approval sessions; every change is one atomic script."""

    def __init__(
        self,
        redis: RedisClient,
        keys: Keys,
        retention_s: int,
        audit: AuditLog | None = None,
        outbox: Outbox | None = None,
        hooks: frozenset[str] = frozenset(),
        on_expired: Callable[[ApprovalSession], None] | None = None,
    ) -> None:
        self.redis = redis
        self.keys = keys
        self.retention_s = retention_s
        self.audit = audit
        self.outbox = outbox
        """Where the audit entries and webhook events of new sessions and decisions go, in
        the same write (without one, a new session's entries go to the audit log directly)."""
        self.hooks = hooks
        """The webhook event types some receiver subscribed to."""
        self.on_expired = on_expired
        """Told of each session this store expired at its deadline (the gateway's metrics)."""
        self._decide_calls = scripts.register(redis, scripts.DECIDE_CALLS)
        self._expire = scripts.register(redis, scripts.EXPIRE_IF_OVERDUE)
        self._begin_run = scripts.register(redis, scripts.BEGIN_RUN)
        self._transition = scripts.register(redis, scripts.TRANSITION)
        self._start_call = scripts.register(redis, scripts.START_CALL)
        self._finish_call = scripts.register(redis, scripts.FINISH_CALL)
        self._reserve_pending = scripts.register(redis, scripts.RESERVE_PENDING)

    async def create(
        self,
        record: SessionRecord,
        initial: Mapping[str, Decision],
        audit: Iterable[AuditEntry] = (),
    ) -> None:
        """Store a new session, with its `audit` entries (and the `approval.requested` event
        of a pending one) in its outbox in the same MULTI. (A pending one entered the
        deadline indexes already: `reserve_pending`.)"""
        session = record.view
        key = self.keys.session(session.id)
        ttl = int(max(session.expires_at - time.time(), 0)) + self.retention_s
        hooks = []
        if session.status is SessionStatus.PENDING and "approval.requested" in self.hooks:
            hooks.append(("approval.requested", session.model_dump(mode="json")))
        # A pending session is in the deadline index already (`reserve_pending`): that
        # finds what a writer that died left (`_expired`). Any other is indexed first.
        indexed = self.outbox is not None and (bool(hooks) or not _pending(session))
        due_at = await self.outbox.expect(session.id) if self.outbox and indexed else None
        entries = list(audit)
        # One MULTI over the session's own keys (one slot): the session and its outbox.
        async with self.redis.pipeline(transaction=True) as pipe:
            pipe.hset(key, mapping=new_session_fields(record, initial))  # type: ignore[arg-type]
            pipe.expire(key, ttl)
            if self.outbox is not None:
                self.outbox.add_to(pipe, session.id, entries, hooks)
            replies = await pipe.execute()
        if self.outbox is not None:
            ids = replies[2 : 2 + len(entries)]
            await self.outbox.settle(session.id, entries, ids, forget=None if hooks else due_at)
            if hooks:
                await self.outbox.written(session.id)
        elif self.audit is not None:
            await self.audit.append(entries)

    async def get(self, session_id: str, *, view_only: bool = False) -> SessionRecord:
        """The session, or `SessionNotFound` (`view_only`: see `SessionRecord.from_hash`)."""
        fields: dict[str, str] = await self.redis.hgetall(self.keys.session(session_id))  # type: ignore[assignment]
        if not fields:
            raise SessionNotFound(f"no approval session {session_id!r}")
        return SessionRecord.from_hash(fields, view_only=view_only)

    async def get_many(self, session_ids: Sequence[str]) -> list[SessionRecord]:
        """The sessions that exist of `session_ids`, whole, read in one round trip."""
        async with self.redis.pipeline(transaction=False) as pipe:
            for session_id in session_ids:
                pipe.hgetall(self.keys.session(session_id))
            rows = await pipe.execute()
        return [SessionRecord.from_hash(row) for row in rows if row]

    async def list_pending(
        self, limit: int = 100, tenant: str | None = None
    ) -> list[ApprovalSession]:
        """Pending sessions (of `tenant`, or of every tenant), soonest deadline first."""
        keys = self.keys
        indexes = [
            keys.deadlines(n) if tenant is None else keys.pending_of(tenant, n) for n in keys.shards
        ]
        async with self.redis.pipeline(transaction=False) as pipe:
            for index in indexes:
                pipe.zrange(index, 0, limit - 1, withscores=True)
            shards: list[list[tuple[str, float]]] = await pipe.execute()
        merged = heapq.merge(*shards, key=lambda pair: pair[1])
        ids = [session_id for session_id, _ in itertools.islice(merged, limit)]
        async with self.redis.pipeline(transaction=False) as pipe:
            for session_id in ids:
                pipe.hgetall(self.keys.session(session_id))
            rows = await pipe.execute()
        records = [SessionRecord.from_hash(r, view_only=True) for r in rows if r]
        return [r.view for r in records if r.status is SessionStatus.PENDING]

    async def pending_calls(self, limit: int = 10_000) -> list[tuple[str, str, str]]:
        """`(tenant, tool name, side)` of each call awaiting a decision, in the first `limit`
        sessions of each shard's deadline index; three round trips, conversations not read."""
        async with self.redis.pipeline(transaction=False) as pipe:
            for shard in self.keys.shards:
                pipe.zrange(self.keys.deadlines(shard), 0, limit - 1)
            shards: list[list[str]] = await pipe.execute()
        keys = [self.keys.session(session_id) for ids in shards for session_id in ids]
        async with self.redis.pipeline(transaction=False) as pipe:
            for key in keys:
                pipe.hmget(key, "status", "tenant", "calls")
            rows: list[list[str | None]] = await pipe.execute()
        pending = [
            (key, tenant or "default", orjson.loads(calls))
            for key, (status, tenant, calls) in zip(keys, rows, strict=True)
            if status == SessionStatus.PENDING and calls
        ]
        async with self.redis.pipeline(transaction=False) as pipe:
            for key, _, calls in pending:
                pipe.hmget(key, [f"status:{call['id']}" for call in calls])
            statuses: list[list[str | None]] = await pipe.execute()
        return [
            (tenant, str(call["name"]), str(call.get("side", "server")))
            for (_, tenant, calls), states in zip(pending, statuses, strict=True)
            for call, state in zip(calls, states, strict=True)
            if state == CallStatus.PENDING
        ]

    async def reserve_pending(
        self, session_id: str, tenant: str, deadline: float, max_total: int, max_tenant: int
    ) -> Literal["total", "tenant"] | None:
        """Count a new pending session against both bounds; the bound that refused it, or
        None. (`create` then stores it; a session whose expiry was never recorded, after a
        crash between two writes, stops counting against its tenant a minute after its
        deadline.)"""
        keys, shard = self.keys, self.keys.shard(session_id)
        elsewhere = [n for n in keys.shards if n != shard]
        counts = [0, 0]
        if elsewhere:
            async with self.redis.pipeline(transaction=False) as pipe:
                for n in elsewhere:
                    pipe.zcard(keys.deadlines(n))
                    pipe.zcard(keys.pending_of(tenant, n))
                cards: list[int] = await pipe.execute()
            counts = [sum(cards[::2]), sum(cards[1::2])]
        refused: str = await self._reserve_pending(
            keys=[keys.deadlines(shard), keys.pending_of(tenant, shard)],
            args=[
                session_id,
                repr(deadline),
                max_total,
                max_tenant,
                repr(time.time() - 60),
                *counts,
            ],
        )
        if refused == "ok":
            return None
        return "total" if refused == "total" else "tenant"

    async def decide_all(
        self,
        session_id: str,
        decision: Literal["approve", "reject"],
        reason: str,
        actor: str,
        record: SessionRecord | None = None,
    ) -> tuple[bool, SessionRecord]:
        """Decide every pending call the same way; returns (applied now, session).

        With nothing pending, the same decision again is a repeat (not an error) when it
        matches what a person decided; otherwise a conflict. `record`: the session as the
        caller already read it.
        """
        record = record or await self.get(session_id)
        calls = record.view.tool_calls
        targets = [c for c in calls if c.status is CallStatus.PENDING] or [
            c for c in calls if c.decision is not None and c.decision.actor not in _NOT_A_PERSON
        ]
        if not targets:
            if any(c.status is CallStatus.EXPIRED for c in calls):
                raise SessionExpired(f"approval session {session_id!r} expired before the decision")
            raise DecisionConflict(
                f"approval session {session_id!r} is {record.status.value}; "
                f"it has nothing left to {decision}"
            )
        items = [CallDecisionItem.build(call, decision, reason, actor) for call in targets]
        outcome, after = await self.decide_calls(session_id, items, record.view.tenant)
        return outcome != "repeat", after

    async def decide_calls(
        self, session_id: str, items: Sequence[CallDecisionItem], tenant: str
    ) -> tuple[DecideOutcome, SessionRecord]:
        """Decide some calls, each its own way, all or none; repeats are not errors.

        Returns "decided" when no call is left pending (the holder was woken), "partial"
        when some still wait, "repeat" when every item repeated a stored decision.
        """
        payload = orjson.dumps([item.as_script_item(session_id, tenant) for item in items])
        actor = items[0].decision.actor if items else ""
        # Only a webhook event needs the outbox index: the session stays in the deadline
        # index until its audit entries are copied, and `_expired` finds what is left.
        hooked = self.outbox is not None and "approval.decided" in self.hooks
        due_at = await self.outbox.expect(session_id) if self.outbox and hooked else None
        outcome: _DecideReply
        outcome, *rest = await self._decide_calls(
            keys=[
                self.keys.session(session_id),
                self.keys.outbox_audit(session_id),
                self.keys.outbox_hooks(session_id),
            ],
            args=[
                payload.decode(),
                self.keys.wakeup_channel(session_id),
                actor,
                "1" if "approval.decided" in self.hooks else "0",
                self.retention_s,
            ],
        )
        if outcome == "ok":
            await self._decided(session_id, tenant, items, rest, due_at)
        elif self.outbox is not None and due_at is not None:  # nothing was written
            await self.outbox.forget(session_id, due_at)
        if outcome == "not_found":
            raise SessionNotFound(f"no approval session {session_id!r}")
        if outcome == "expired":
            await self._expired(session_id, now=bool(rest))
            raise SessionExpired(f"approval session {session_id!r} expired before the decision")
        if outcome == "unknown_call":
            raise UnknownToolCall(f"approval session {session_id!r} has no tool call {rest[0]!r}")
        if outcome == "hash_mismatch":
            raise HashMismatch(
                f"tool call {rest[0]!r}: arguments_sha256 does not match the call's arguments"
            )
        if outcome == "conflict":
            raise DecisionConflict(
                f"tool call {rest[0]!r} is {rest[1]}; it was decided differently already"
            )
        if outcome == "repeat":
            return "repeat", SessionRecord.from_hash(_pairs(rest[0]), view_only=True)
        return rest[0], SessionRecord.from_hash(_pairs(rest[1]), view_only=True)

    async def _decided(
        self,
        session_id: str,
        tenant: str,
        items: Sequence[CallDecisionItem],
        rest: list[Any],
        due_at: int | None,
    ) -> None:
        """After `DECIDE_CALLS` applied some items: their audit entries from the outbox to
        the audit log, the session out of the pending indexes once settled, and the
        webhook event's view of the session."""
        settled, hook, decided, entry_ids = rest[0] == "decided", rest[2], rest[3], rest[4]
        by_call = {item.call_id: item for item in items}
        entries = [by_call[call_id].audit_entry(session_id, tenant) for call_id in decided]

        def unindex(pipe: RedisPipeline) -> None:
            if settled:
                shard = self.keys.shard(session_id)
                pipe.zrem(self.keys.deadlines(shard), session_id)
                pipe.zrem(self.keys.pending_of(tenant, shard), session_id)

        if self.outbox is not None:
            forget = None if hook else due_at
            await self.outbox.settle(session_id, entries, entry_ids, also=unindex, forget=forget)
            if hook:
                after = SessionRecord.from_hash(_pairs(rest[1]), view_only=True)
                await self.outbox.written(session_id, {hook: after.view})
        elif settled:
            await self._unindex(session_id, tenant)

    async def expire_if_overdue(self, session_id: str) -> SessionStatus | None:
        """Expire a pending session whose deadline passed; the status after, or None."""
        status = await self._expire(
            keys=[self.keys.session(session_id)], args=[self.keys.wakeup_channel(session_id)]
        )
        if status is None:
            await self.redis.zrem(self.keys.deadlines(self.keys.shard(session_id)), session_id)
            return None
        if status == "expired_now":
            await self._expired(session_id, now=True)
            return SessionStatus.EXPIRED
        if status != SessionStatus.PENDING:
            await self._expired(session_id, now=False)
        return SessionStatus(status)

    async def _expired(self, session_id: str, *, now: bool) -> None:
        """Drop a session that is no longer pending from the deadline indexes; audit its
        expiry if it expired just now."""
        if now and self.on_expired is not None:
            session = (await self.get(session_id, view_only=True)).view
            self.on_expired(session)
            tenant = session.tenant
        else:
            key = self.keys.session(session_id)
            tenant = str(await self.redis.hget(key, "tenant") or "default")
        if self.outbox is not None:  # audit entries a writer that died left behind
            await self.outbox.relay_audit(session_id)
        await self._unindex(session_id, tenant)
        if now and self.audit is not None:
            await self.audit.append([AuditEntry("expired", session=session_id, tenant=tenant)])

    async def _unindex(self, session_id: str, tenant: str) -> None:
        """The session is no longer pending: out of its shard's deadline indexes."""
        shard = self.keys.shard(session_id)
        async with self.redis.pipeline(transaction=False) as pipe:
            pipe.zrem(self.keys.deadlines(shard), session_id)
            pipe.zrem(self.keys.pending_of(tenant, shard), session_id)
            await pipe.execute()

    async def overdue(self, limit: int = 100) -> list[str]:
        """Ids in the deadline indexes whose deadline has passed (up to `limit` per shard)."""
        now = time.time()
        async with self.redis.pipeline(transaction=False) as pipe:
            for shard in self.keys.shards:
                pipe.zrangebyscore(self.keys.deadlines(shard), "-inf", now, 0, limit)
            shards: list[list[str]] = await pipe.execute()
        return [session_id for ids in shards for session_id in ids]

    async def begin_run(self, session_id: str, runner: str, token: int = 0) -> Claim:
        """Claim the continuation of a decided session, in one round trip (see `Claim`).

        A `token` above the one that claimed it last takes over a running session.
        """
        outcome: _MoveReply
        outcome, *rest = await self._begin_run(
            keys=[self.keys.session(session_id)],
            args=[" ".join(sources_of(SessionStatus.RUNNING)), runner, token],
        )
        if outcome == "not_found":
            raise SessionNotFound(f"no approval session {session_id!r}")
        if outcome == "refused":
            status = SessionStatus(rest[0])
            record = SessionRecord.from_hash(_pairs(rest[1])) if rest[1] else None
            return Claim(None, status, record)
        record = SessionRecord.from_hash(_pairs(rest[1]))
        return Claim(list(rest[0]), SessionStatus(rest[2]), record)

    async def finish(self, session_id: str, target: SessionStatus) -> bool:
        """Move a running session to `completed` or `failed`; False if it was not running."""
        outcome: _MoveReply
        outcome, *_ = await self._transition(
            keys=[self.keys.session(session_id)],
            args=[
                target.value,
                " ".join(sources_of(target)),
                self.retention_s,
                self.keys.wakeup_channel(session_id),
            ],
        )
        return bool(outcome == "ok")

    async def start_call(
        self,
        session_id: str,
        call_id: str,
        worker: str,
        *,
        reclaimed: bool = False,
        idempotent: bool = False,
        max_attempts: int = 1,
        job_id: str = "",
    ) -> tuple[StartOutcome, RunnableCall | None]:
        """Take a call: ('run', what to run), or ('unknown' | 'exhausted' | 'skip', None)."""
        outcome: StartOutcome
        outcome, *rest = await self._start_call(
            keys=[self.keys.session(session_id)],
            args=[
                call_id,
                worker,
                "reclaimed" if reclaimed else "fresh",
                "1" if idempotent else "0",
                max_attempts,
                self.keys.wakeup_channel(session_id),
                job_id,
            ],
        )
        if outcome != "run":
            return outcome, None
        calls: list[dict[str, Any]] = orjson.loads(rest[0])
        call = next(c for c in calls if c["id"] == call_id)
        decision = Decision.model_validate_json(rest[1]) if rest[1] else None
        return outcome, RunnableCall.of(call, decision, tenant=rest[2])

    async def finish_call(self, session_id: str, call_id: str, result: ToolResult) -> bool:
        """Store a call's outcome and wake the holder; False if the call was not running."""
        stored = await self._finish_call(
            keys=[self.keys.session(session_id)],
            args=[
                call_id,
                result.status,
                result.model_dump_json(),
                self.keys.wakeup_channel(session_id),
            ],
        )
        return bool(stored)


@dataclass(frozen=True, slots=True)
class RunnableCall:
    """What a worker was handed: the session's call under that id, and its decision."""

    name: str
    arguments: Any
    """The approved arguments (the edited ones when the approver edited)."""
    decision: Decision | None
    tenant: str = "default"

    @property
    def approved_sha256(self) -> str:
        """The hash of the arguments as approved ("" without an approval)."""
        if self.decision is None or self.decision.decision not in ("approve", "edit"):
            return ""
        return self.decision.arguments_sha256

    @classmethod
    def of(
        cls, call: Mapping[str, Any], decision: Decision | None, tenant: str = "default"
    ) -> RunnableCall:
        arguments = call["arguments"]
        if decision is not None and decision.decision == "edit" and decision.arguments is not None:
            arguments = decision.arguments
        return cls(str(call["name"]), arguments, decision, tenant)


_NOT_A_PERSON = frozenset({"policy", "grant", "deadline"})
"""Decision actors that are not approvers: what they decided is not repeated or contested."""

_STATUS_OF: Mapping[DecisionKind, CallStatus] = {
    "approve": CallStatus.APPROVED,
    "edit": CallStatus.APPROVED,
    "reject": CallStatus.REJECTED,
    "respond": CallStatus.RESPONDED,
}


@dataclass(frozen=True, slots=True)
class CallDecisionItem:
    """One call's decision, validated and ready to store."""

    call_id: str
    decision: Decision
    status: CallStatus
    expected_sha256: str = ""
    """The hash the approver saw; "" when the approver sent none."""
    result: ToolResult | None = None
    tool: str = ""
    call_sha256: str = ""
    """The hash of the call's arguments as the model sent them."""

    @classmethod
    def build(
        cls,
        call: ToolCallView,
        kind: DecisionKind,
        reason: str,
        actor: str,
        *,
        arguments: dict[str, Any] | None = None,
        result: str | None = None,
        expected_sha256: str = "",
    ) -> CallDecisionItem:
        """`arguments` for an edit (already checked), `result` for a respond."""
        if kind == "approve":
            sha = call.arguments_sha256
        elif kind == "edit" and arguments is not None:
            sha = arguments_sha256(arguments)
        else:
            sha = ""
        decision = Decision(
            decision=kind,
            reason=reason,
            actor=actor,
            decided_at=time.time(),
            arguments=arguments,
            arguments_sha256=sha,
            result=result,
        )
        stored = None
        if kind == "respond" and result is not None:
            stored = ToolResult(status="succeeded", content=result, worker=f"approver:{actor}")
        return cls(
            call.id,
            decision,
            _STATUS_OF[kind],
            expected_sha256,
            stored,
            call.name,
            call.arguments_sha256,
        )

    def audit_entry(self, session_id: str, tenant: str) -> AuditEntry:
        """The `decided` entry the audit log gets when this decision is applied."""
        detail: dict[str, Any] = {
            "decision": self.decision.decision,
            "reason": self.decision.reason,
            "arguments_sha256": self.decision.arguments_sha256 or self.call_sha256,
        }
        if self.decision.decision == "edit":
            detail["original_sha256"] = self.call_sha256
        return AuditEntry(
            "decided", session_id, self.tool, self.call_id, self.decision.actor, tenant, detail
        )

    def as_script_item(self, session_id: str, tenant: str) -> dict[str, str]:
        return {
            "audit": orjson.dumps(self.audit_entry(session_id, tenant).fields()).decode(),
            "id": self.call_id,
            "kind": self.decision.decision,
            "reason": self.decision.reason,
            "expected": self.expected_sha256,
            "sha": self.decision.arguments_sha256,
            "status": self.status.value,
            "decision": self.decision.model_dump_json(exclude_none=True),
            "result": self.result.model_dump_json() if self.result else "",
            "content": self.decision.result or "",
        }


def _pending(session: ApprovalSession) -> bool:
    return session.status is SessionStatus.PENDING


def _pairs(flat: list[str]) -> dict[str, str]:
    return dict(zip(flat[::2], flat[1::2], strict=True))
