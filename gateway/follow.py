"""Following a run from its log: what a re-attached client or a retried request is sent.

The run's events after the client's last id come from the run log (or the local run's
memory), then live ones. When no replica holds the run's lease any more (its replica died
or drained), this replica takes the run over and continues it. Every such stream ends
with `[DONE]`: after the run's last event, after a failure (an error event first), or at
once when the client already has every event.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from dataclasses import dataclass

import structlog
from starlette.responses import Response

from core.errors import GatewayError, RedisUnavailable
from core.runlog import RunLog
from gateway import sse
from gateway.chunks import ChunkMeta, ChunkWriter
from gateway.events import Ended, LoggedEvent, Reattach, StreamFailed, from_json
from gateway.replica import Replica
from gateway.runs import RunRegistry

log = structlog.stdlib.get_logger(__name__)

PAGE = 1000
"""Logged events read per call while replaying."""


async def follow_run(
    runs: RunRegistry, slots: sse.StreamSlots, log_id: str, after: int, model: str
) -> Response:
    """A stream of run `log_id`'s events after `after`, live until it ends, on this replica."""
    fields = await runs.runlog.meta(log_id)
    meta = ChunkMeta.of_fields(fields) if fields else ChunkMeta.new(model, False)
    return slots.response(_follow(runs.replica, runs, log_id, after, meta))


async def _follow(
    replica: Replica, runs: RunRegistry, log_id: str, after: int, meta: ChunkMeta
) -> AsyncIterator[bytes]:
    """The run's events after `after`, ending with `[DONE]` however the stream ends."""
    chunks, sent = ChunkWriter(meta), _Sent(after)

    def failed(error: GatewayError) -> bytes:
        if error.code == RedisUnavailable.code:  # the run is not over: come back for it
            return chunks.reattach(Reattach(f"/v1/approvals/{log_id}/stream", sent.last))
        # No `id:`: the client's last event id stays that of the last event it really got.
        return sse.data(StreamFailed.of(error).body()) + sse.DONE

    parts = _replay_and_follow(replica, runs, log_id, sent, chunks)
    async for part in sse.failures_as(parts, failed, "reattach_failed", run=log_id):
        yield part


@dataclass(slots=True)
class _Sent:
    last: int
    """The id of the last event sent to the client."""


async def _replay_and_follow(
    replica: Replica, runs: RunRegistry, log_id: str, sent: _Sent, chunks: ChunkWriter
) -> AsyncIterator[bytes]:
    settings = replica.settings
    async with replica.hub.watch(log_id) as waiter:
        beat = sse.HeartbeatTimer(settings.heartbeat_interval_s)
        ended = False
        while True:
            run = runs.runs.get(log_id)
            # The local run has the events from its first on in memory.
            before = run.first_seq if run is not None else None
            async for seq, event in _logged(runs.runlog, log_id, sent.last, before):
                sent.last = seq
                yield chunks.render(seq, event)
                if isinstance(event, Ended):
                    return
            if run is not None:
                async for items in run.listen(sent.last):
                    yield chunks.items(items)
                return
            if ended:  # and the replay since found no more: the client has every event
                yield sse.DONE
                return
            if runs.draining:
                yield chunks.reattach(Reattach(f"/v1/approvals/{log_id}/stream", sent.last))
                return
            if not await runs.runlog.is_leased(log_id):
                # A run that ended may have ended since the replay above (another replica
                # logged its last events and let its lease go): replay once more first.
                ended = bool((await runs.runlog.meta(log_id)).get("done"))
                if ended or await runs.take_over(log_id):
                    continue
            await waiter.wait(min(settings.reread_interval_s, beat.remaining()))
            if beat.due():
                yield sse.HEARTBEAT


async def _logged(
    runlog: RunLog, log_id: str, after: int, before: int | None
) -> AsyncIterator[tuple[int, LoggedEvent]]:
    """Every logged event of the run after `after` (and before `before`), a page at a time."""
    while True:
        entries = await runlog.read_after(log_id, after, count=PAGE)
        for seq, raw in entries:
            if before is not None and seq >= before:
                return
            yield seq, from_json(raw)
            after = seq
        if len(entries) < PAGE:
            return
