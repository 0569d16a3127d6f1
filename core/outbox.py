"""A session's side effects, written with the change that causes them and relayed after.

A decision (or a new session) writes its audit entries and its webhook events into two
streams of the session's own (same hash tag, so the same script or MULTI that changes the
session writes them, on Redis Cluster too): `outbox_audit` and `outbox_hooks`. Whatever
happens to the replica next, they are in Redis. A relay then copies the audit entries to
the tenant's audit stream and hands the webhook events, one at a time per session, to the
webhook sender, deleting each only once it is done with:

    audit entry     appended to the audit log, then deleted from the outbox
    webhook event   delivered (or given up on) to every target, then deleted

so a relay that dies half-way leaves the rest for the next one: at-least-once, with the
same event id every time (`event_id`), in order per session.

Which sessions have something to relay is the sorted sets `Keys.outbox_due` (unix ms of
the next look). A writer adds its session there before it writes (a crash right after
the write is found) and again after (a relay that emptied the index meanwhile does not
hide the new entries); the relay of the replica that wrote is told at once (`kick`).
"""

from __future__ import annotations

import asyncio
import contextlib
import secrets
import time
from collections.abc import Awaitable, Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from typing import Any

import orjson
import structlog
from redis.asyncio import RedisCluster
from redis.asyncio.lock import Lock
from redis.exceptions import LockError

from core import scripts
from core.audit import AuditEntry, AuditLog
from core.connect import REDIS_ERRORS, RedisClient, RedisPipeline, stop_if_cancelled
from core.keys import Keys
from core.records import ApprovalSession

log = structlog.stdlib.get_logger(__name__)

Deliver = Callable[[str, str, dict[str, Any]], Awaitable[None]]
"""Deliver one webhook event (id, type, data) to every target; returns once each is done."""
SessionView = Callable[[str], Awaitable[dict[str, Any] | None]]
"""The session as the approvals API shows it now (None once it is gone)."""

LOCK_MS = 10_000
"""How long a relay owns a session's outbox without renewing (the gateway: `lease_s`)."""
RETRY_MS = 2_000
"""When a session is looked at again if its relay did not finish (or a writer died)."""


def event_id(session_id: str, entry_id: str) -> str:
    """The webhook event id of an outbox entry: the same on every redelivery."""
    return f"evt_{session_id}_{entry_id.replace('-', '_')}"


@dataclass
class Outbox:
    """Writes to the session outboxes, and relays them."""

    redis: RedisClient
    keys: Keys
    audit: AuditLog
    retention_s: int
    owner: str = ""
    """This process's name, in the relay lock."""
    lock_ms: int = LOCK_MS
    """How long a dead relay's lock keeps the others off its sessions (renewed while alive)."""
    _kicked: set[str] = field(default_factory=set)
    _wake: asyncio.Event = field(default_factory=asyncio.Event)

    def __post_init__(self) -> None:
        self._forget = scripts.register(self.redis, scripts.FORGET_IF_UNCHANGED)

    # --- writing ------------------------------------------------------------------------------

    async def expect(self, session_id: str, later_ms: int = RETRY_MS) -> int:
        """Before a write: look at the session's outbox soon, even if the writer dies. The
        time of that look (for `forget`)."""
        due_at = _now_ms() + later_ms
        await self.redis.zadd(self._due(session_id), {session_id: due_at})
        return due_at

    async def forget(self, session_id: str, due_at: int) -> None:
        """The writer left nothing to relay: out of the index, unless indexed again since."""
        await self._forget(keys=[self._due(session_id)], args=[session_id, due_at])

    def _count(self, pipe: RedisPipeline, session_id: str) -> None:
        """Queue the lengths of the session's two outbox streams (deleting an entry leaves
        an empty stream behind: its key exists)."""
        pipe.xlen(self.keys.outbox_audit(session_id))
        pipe.xlen(self.keys.outbox_hooks(session_id))

    def add_to(
        self,
        pipe: RedisPipeline,
        session_id: str,
        entries: Iterable[AuditEntry] = (),
        hooks: Iterable[tuple[str, Mapping[str, Any]]] = (),
    ) -> None:
        """Queue outbox writes on the pipeline (the MULTI) that changes the session: first
        one `XADD` per audit entry (their replies are the entries' ids, for `settle`)."""
        audit_key = self.keys.outbox_audit(session_id)
        hooks_key = self.keys.outbox_hooks(session_id)
        for entry in entries:
            pipe.xadd(audit_key, {"e": orjson.dumps(entry.fields())})
        for kind, data in hooks:
            pipe.xadd(hooks_key, {"type": kind, "data": orjson.dumps(data)})
        for key in (audit_key, hooks_key):
            pipe.expire(key, self.retention_s)

    async def settle(
        self,
        session_id: str,
        entries: Sequence[AuditEntry],
        entry_ids: Sequence[str],
        also: Callable[[RedisPipeline], None] | None = None,
        forget: int | None = None,
    ) -> None:
        """After a write, the writer copies its own audit entries to the audit log and
        deletes them from the outbox, in one round trip (with whatever `also` queues): the
        relays only finish what a writer that died left. An entry copied twice carries
        the same `outbox_id` detail. `forget`: the writer indexed the session (`expect`)
        and left nothing else (no webhook event): it leaves the index again."""
        # On a cluster a pipeline's commands reach several nodes in no set order: what
        # `also` queues (taking the session out of the deadline index, which would find
        # these entries if this process died) waits until the copy is done.
        apart = isinstance(self.redis, RedisCluster)
        async with self.redis.pipeline(transaction=False) as pipe:
            self.audit.add_to(pipe, _relayed(session_id, entries, entry_ids))
            if entry_ids:
                pipe.xdel(self.keys.outbox_audit(session_id), *entry_ids)
            if also is not None and not apart:
                also(pipe)
            await pipe.execute()
        if also is not None and apart:
            async with self.redis.pipeline(transaction=False) as pipe:
                also(pipe)
                await pipe.execute()
        if forget is not None:  # a script in a pipeline would cost a SCRIPT EXISTS
            await self.forget(session_id, forget)

    async def written(
        self, session_id: str, views: Mapping[str, ApprovalSession] | None = None
    ) -> None:
        """After a write of webhook events: index the session again, and tell this
        process's relay. `views`: the session as its webhook events (by entry id) should
        show it; an event without one (its writer died before this) shows the session as
        it is when relayed."""
        if views:
            key = self.keys.outbox_views(session_id)
            async with self.redis.pipeline(transaction=False) as pipe:
                pipe.hset(key, mapping={i: v.model_dump_json() for i, v in views.items()})
                pipe.expire(key, self.retention_s)
                await pipe.execute()
        await self.expect(session_id)
        self.kick(session_id)

    def kick(self, session_id: str) -> None:
        self._kicked.add(session_id)
        self._wake.set()

    # --- relaying ------------------------------------------------------------------------------

    def _lock(self, session_id: str, part: str) -> Lock:
        return self.redis.lock(self.keys.outbox_lock(session_id, part), timeout=self.lock_ms / 1000)

    async def relay_audit(self, session_id: str, wait_s: float = 2.0) -> bool:
        """Copy the session's pending audit entries to the audit log, each deleted from the
        outbox once it is there (an entry copied twice, by a relay that died in between,
        carries the same `outbox_id` detail). False when another relay held them `wait_s`."""
        lock = self._lock(session_id, "audit")
        if not await lock.acquire(blocking_timeout=wait_s, token=self._token()):
            return False
        try:
            key = self.keys.outbox_audit(session_id)
            rows: list[tuple[str, dict[str, str]]] = await self.redis.xrange(key, "-", "+")  # type: ignore[assignment]
            if rows:
                entries = []
                for _, fields in rows:
                    flat = orjson.loads(fields["e"])
                    entries.append(AuditEntry(**flat, detail=orjson.loads(flat.pop("detail"))))
                ids = [entry_id for entry_id, _ in rows]
                await self.audit.append(_relayed(session_id, entries, ids))
                await self.redis.xdel(key, *ids)
            return True
        finally:
            with contextlib.suppress(*REDIS_ERRORS):
                await lock.release()

    async def relay_hooks(
        self, session_id: str, deliver: Deliver | None, view: SessionView
    ) -> bool:
        """Hand the session's webhook events to `deliver` in order, each deleted once every
        target is done with it. False when another relay holds them."""
        if deliver is None:  # no receivers here (a replica of an older configuration?)
            return False
        lock = self._lock(session_id, "hooks")
        if not await lock.acquire(blocking=False, token=self._token()):
            return False
        keeper = _Keeper(lock, self.lock_ms)
        try:
            key = self.keys.outbox_hooks(session_id)
            while not keeper.lost:
                rows: list[tuple[str, dict[str, str]]] = await self.redis.xrange(  # type: ignore[assignment]
                    key, "-", "+", count=1
                )
                if not rows:
                    return True
                entry_id, fields = rows[0]
                data = orjson.loads(fields["data"])
                if fields["type"] == "approval.decided":
                    data = {"session": await self._view(session_id, entry_id, view), **data}
                await deliver(event_id(session_id, entry_id), fields["type"], data)
                if keeper.lost:  # another relay may be sending it too: leave it to that one
                    break
                await self.redis.xdel(key, entry_id)
                await self.redis.hdel(self.keys.outbox_views(session_id), entry_id)
            log.warning("outbox_lock_lost", session_id=session_id)  # another relay goes on
            return False
        finally:
            await keeper.stop()
            with contextlib.suppress(*REDIS_ERRORS):
                await lock.release()

    async def relay(self, session_id: str, deliver: Deliver | None, view: SessionView) -> bool:
        """Relay the session's outbox: audit entries, then webhook events in order. True when
        it is empty after (and the session left the index)."""
        async with self.redis.pipeline(transaction=False) as pipe:
            pipe.zscore(self._due(session_id), session_id)
            self._count(pipe, session_id)
            score, audit_left, hooks_left = await pipe.execute()
        if not (audit_left or hooks_left):  # settled: out of the index, unless re-indexed
            if score is not None:
                await self._forget(keys=[self._due(session_id)], args=[session_id, score])
            return True
        # Other relays look again only once this one's locks could have lapsed.
        bumped = _now_ms() + self.lock_ms
        await self.redis.zadd(self._due(session_id), {session_id: bumped})
        audited = await self.relay_audit(session_id, wait_s=0.1)
        if deliver is None and hooks_left:  # for a replica with receivers: not soon
            await self.expect(session_id, later_ms=60_000)
            return False
        if not (await self.relay_hooks(session_id, deliver, view) and audited):
            await self.expect(session_id)  # another relay holds a part: look again soon
            return False
        async with self.redis.pipeline(transaction=False) as pipe:
            self._count(pipe, session_id)
            if any(await pipe.execute()):
                return False
        # Unless a writer indexed it again meanwhile (its new entries would hide).
        await self._forget(keys=[self._due(session_id)], args=[session_id, bumped])
        return True

    async def _view(self, session_id: str, entry_id: str, view: SessionView) -> Any:
        stored = await self.redis.hget(self.keys.outbox_views(session_id), entry_id)
        return orjson.loads(stored) if stored else await view(session_id)

    def _due(self, session_id: str) -> str:
        return self.keys.outbox_due(self.keys.shard(session_id))

    async def _due_now(self, limit: int = 100) -> list[str]:
        async with self.redis.pipeline(transaction=False) as pipe:
            for shard in self.keys.shards:
                pipe.zrangebyscore(self.keys.outbox_due(shard), "-inf", _now_ms(), 0, limit)
            shards: list[list[str]] = await pipe.execute()
        return [session_id for ids in shards for session_id in ids]

    def _token(self) -> str:
        return f"{self.owner}:{secrets.token_hex(8)}"

    async def relay_forever(
        self, deliver: Deliver | None, view: SessionView, *, concurrency: int = 8
    ) -> None:
        """Relay what is kicked here at once, and every due session (any replica's) soon."""
        running: dict[str, asyncio.Task[bool]] = {}
        slots = asyncio.Semaphore(concurrency)

        async def one(session_id: str) -> bool:
            async with slots:
                try:
                    return await self.relay(session_id, deliver, view)
                except Exception as error:  # Redis trouble, or the sender is full: later
                    stop_if_cancelled()
                    log.warning("outbox_not_relayed", session_id=session_id, error=str(error))
                    with contextlib.suppress(*REDIS_ERRORS):
                        await self.expect(session_id)
                    return False

        try:
            while True:
                stop_if_cancelled()  # a cancellation a library swallowed still ends the loop
                with contextlib.suppress(TimeoutError):
                    async with asyncio.timeout(0.5):
                        await self._wake.wait()
                self._wake.clear()
                kicked, self._kicked = self._kicked, set()
                try:
                    due = await self._due_now()
                except Exception as error:  # Redis away: what was kicked goes on
                    stop_if_cancelled()
                    log.warning("outbox_index_unreadable", error=str(error))
                    due = []
                for session_id in {*kicked, *due}:
                    if session_id not in running:
                        task = asyncio.create_task(one(session_id), name=f"outbox-{session_id}")
                        running[session_id] = task
                        task.add_done_callback(lambda _, s=session_id: running.pop(s, None))  # type: ignore[misc]
        finally:  # stopping: what is half-relayed stays in Redis for the next relay
            for task in list(running.values()):
                task.cancel()
            await asyncio.gather(*running.values(), return_exceptions=True)


def _relayed(
    session_id: str, entries: Iterable[AuditEntry], entry_ids: Iterable[str]
) -> list[AuditEntry]:
    """The entries as the audit log gets them: each with its outbox id in its detail."""
    return [
        replace(entry, detail={**entry.detail, "outbox_id": f"{session_id}/{entry_id}"})
        for entry, entry_id in zip(entries, entry_ids, strict=True)
    ]


class _Keeper:
    """Extends a relay's lock while it works (a slow webhook receiver may take minutes),
    through Redis trouble; `lost` once the lock may be someone else's."""

    def __init__(self, lock: Lock, lock_ms: int) -> None:
        self.lock = lock
        self.lock_ms = lock_ms
        self.lost = False
        self._task = asyncio.create_task(self._keep(), name="outbox-lock")

    async def _keep(self) -> None:
        held_until = time.monotonic() + self.lock_ms / 1000
        while True:
            await asyncio.sleep(self.lock_ms / 3000)
            try:
                await self.lock.extend(self.lock_ms / 1000, replace_ttl=True)
                held_until = time.monotonic() + self.lock_ms / 1000
            except LockError:  # not ours any more
                self.lost = True
                return
            except REDIS_ERRORS as error:
                log.warning("outbox_lock_not_extended", error=str(error))
                if time.monotonic() >= held_until:  # it may have lapsed meanwhile
                    self.lost = True
                    return

    async def stop(self) -> None:
        self._task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await self._task


def _now_ms() -> int:
    return int(time.time() * 1000)
