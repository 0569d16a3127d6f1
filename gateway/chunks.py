"""Rendering events as OpenAI `chat.completion.chunk` SSE events, each with an `id:`.

The same renderer serves the original stream and every re-attached one, so a client
sees the same chunks (same completion id, same sequence numbers) on any replica.
"""

from __future__ import annotations

import functools
import secrets
import time
from dataclasses import dataclass
from typing import Any

import orjson
from openai.types.chat import ChatCompletionChunk
from pydantic.json_schema import SkipJsonSchema

from core.records import ApprovalSession, CallStatus, SessionStatus
from gateway import sse
from gateway.events import (
    ApprovalNotice,
    ClientToolCalls,
    ContentDelta,
    Ended,
    Finished,
    Heartbeat,
    Item,
    LoggedEvent,
    Reattach,
    Resumed,
    StreamFailed,
    ToolEvent,
)


class StreamChunk(ChatCompletionChunk):
    """What a streamed chunk holds (the schema of what `ChunkWriter` writes): OpenAI's
    `chat.completion.chunk`, with gateway information in extra fields of chunks whose delta
    is empty."""

    approval: ApprovalSession | SkipJsonSchema[None] = None
    """The session, when calls wait for a decision (and again if it expires)."""
    tool_event: dict[str, Any] | SkipJsonSchema[None] = None
    """A server-side call's progress: `{"type": "executing" | "result" | "rejected" | "error",
    "tool_call_id", "name", ...}`."""
    resumed: dict[str, str] | SkipJsonSchema[None] = None
    """`{"replica"}`: another replica took the run over."""
    reattach: dict[str, str] | SkipJsonSchema[None] = None
    """`{"url", "last_event_id"}`: continue there; `[DONE]` follows."""


@dataclass(frozen=True, slots=True)
class ChunkMeta:
    """What makes a completion's chunks the same on every replica."""

    completion_id: str
    model: str
    created: int
    include_usage: bool
    notice_as_content: bool = False
    """Also say a pending approval notice as a content delta (for clients that read ahead)."""

    @classmethod
    def new(cls, model: str, include_usage: bool, notice_as_content: bool = False) -> ChunkMeta:
        completion_id = "chatcmpl-" + secrets.token_hex(12)
        return cls(completion_id, model, int(time.time()), include_usage, notice_as_content)

    def as_fields(self) -> dict[str, str]:
        return {
            "completion_id": self.completion_id,
            "model": self.model,
            "created": str(self.created),
            "include_usage": "1" if self.include_usage else "",
            "notice_as_content": "1" if self.notice_as_content else "",
        }

    @classmethod
    def of_fields(cls, fields: dict[str, str]) -> ChunkMeta:
        created, include_usage = int(fields["created"]), bool(fields["include_usage"])
        notice = bool(fields.get("notice_as_content"))
        return cls(fields["completion_id"], fields["model"], created, include_usage, notice)


class ChunkWriter:
    """Builds the chunks of one completion."""

    def __init__(self, meta: ChunkMeta) -> None:
        self.meta = meta

    @functools.cached_property
    def _content_template(self) -> tuple[bytes, bytes]:
        """A content chunk differs from the next only by its text: encode the rest once
        (on first use: a stream held on approval may never send content)."""
        head, tail = orjson.dumps(self.chunk({"content": ""})).split(b'"content":""', 1)
        return head + b'"content":', tail

    def _content_payload(self, text: str) -> bytes:
        head, tail = self._content_template
        return head + orjson.dumps(text) + tail

    def chunk(
        self, delta: dict[str, Any], finish_reason: str | None = None, **extra: Any
    ) -> dict[str, Any]:
        choice = {"index": 0, "delta": delta, "logprobs": None, "finish_reason": finish_reason}
        return {
            "id": self.meta.completion_id,
            "object": "chat.completion.chunk",
            "created": self.meta.created,
            "model": self.meta.model,
            "system_fingerprint": None,
            "choices": [choice],
            **extra,
        }

    def usage(self, finished: Finished) -> dict[str, int]:
        return {
            "prompt_tokens": finished.prompt_tokens,
            "completion_tokens": finished.completion_tokens,
            "total_tokens": finished.prompt_tokens + finished.completion_tokens,
        }

    def role(self, seq: int) -> bytes:
        """The first event of every stream."""
        return frame(seq, orjson.dumps(self.chunk({"role": "assistant", "content": ""})))

    def contents(self, after: int, pieces: list[str]) -> bytes:
        """Pieces as consecutive content chunks numbered from `after` + 1, in one write:
        the hot path, one `orjson.dumps` of each text."""
        numbered = enumerate(pieces, after + 1)
        return b"".join([frame(seq, self._content_payload(piece)) for seq, piece in numbered])

    def render(self, seq: int, event: LoggedEvent) -> bytes:
        """One event as SSE, every `data:` carrying the event's `id:`."""
        return b"".join(frame(seq, payload) for payload in self._payloads(event))

    def items(self, items: list[Item]) -> bytes:
        """What a run listener took at once, as SSE for one write."""
        return b"".join(self._item(item) for item in items)

    def _item(self, item: Item) -> bytes:
        if isinstance(item, Heartbeat):
            return sse.HEARTBEAT
        if isinstance(item, tuple):
            return self.render(*item)
        return self.reattach(item)

    def reattach(self, event: Reattach) -> bytes:
        """Tell the client where to continue; no `id:`, so its last event id stays put."""
        detail = {"url": event.url, "last_event_id": str(event.last_event_id)}
        return sse.data(self.chunk({}, reattach=detail)) + sse.DONE

    def _payloads(self, event: LoggedEvent) -> list[bytes]:
        match event:
            case ContentDelta(text):
                return [self._content_payload(text)]
            case ApprovalNotice(session):
                notice = orjson.dumps(self.chunk({}, approval=session.model_dump(mode="json")))
                if not self.meta.notice_as_content or session.status is not SessionStatus.PENDING:
                    return [notice]
                return [notice, self._content_payload(notice_text(session))]
            case ToolEvent():
                return [orjson.dumps(self.chunk({}, tool_event=event.payload()))]
            case ClientToolCalls(calls):
                indexed = [{"index": i, **call} for i, call in enumerate(calls)]
                return [orjson.dumps(self.chunk({"tool_calls": indexed}))]
            case Finished():
                payloads = [orjson.dumps(self.chunk({}, finish_reason=event.finish_reason))]
                if self.meta.include_usage:
                    usage = {**self.chunk({}), "choices": [], "usage": self.usage(event)}
                    payloads.append(orjson.dumps(usage))
                return payloads
            case StreamFailed():
                return [orjson.dumps(event.body())]
            case Resumed(replica):
                return [orjson.dumps(self.chunk({}, resumed={"replica": replica}))]
            case Ended():
                return [b"[DONE]"]


def notice_text(session: ApprovalSession) -> str:
    """A pending approval said in words, for clients that show only content."""
    waiting = [call.name for call in session.tool_calls if call.status is CallStatus.PENDING]
    return (
        f"[Waiting for approval of {', '.join(waiting)}: approval session {session.id}, "
        f"conversation {session.conversation}]\n"
    )


def frame(seq: int, payload: bytes) -> bytes:
    return b"id: %d\ndata: %b\n\n" % (seq, payload)
