"""What a conversation produces; each wire protocol renders these its own way."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import orjson

from core.errors import GatewayError
from core.records import ApprovalSession


@dataclass(frozen=True, slots=True)
class ContentDelta:
    """A piece of the model's answer."""

    text: str


@dataclass(slots=True)
class TextPieces:
    """Pieces of the answer that arrived from upstream together (one network read).

    Each piece is one `ContentDelta` to clients, with its own sequence number; keeping
    them together lets a stream write them in one send, and costs nothing when pieces
    arrive one at a time.
    """

    pieces: list[str]


@dataclass(frozen=True, slots=True)
class ClientToolCalls:
    """Calls of client-supplied tools, returned to the client as ordinary `tool_calls`."""

    calls: list[dict[str, Any]]


@dataclass(frozen=True, slots=True)
class ReleasedToClient:
    """Approved client calls, for the client to run (the conversation loop ends its turn with
    them; never rendered as such)."""

    calls: list[dict[str, Any]]


@dataclass(frozen=True, slots=True)
class ApprovalNotice:
    """A session was opened (status pending) or ended without a decision (expired)."""

    session: ApprovalSession


@dataclass(frozen=True, slots=True)
class ToolEvent:
    """Progress of a server-side call: executing, result, rejected or error."""

    type: str
    tool_call_id: str
    name: str
    detail: dict[str, Any] = field(default_factory=dict)

    def payload(self) -> dict[str, Any]:
        return {
            "type": self.type,
            "tool_call_id": self.tool_call_id,
            "name": self.name,
            **self.detail,
        }


@dataclass(frozen=True, slots=True)
class Heartbeat:
    """Nothing happened for a heartbeat interval; keep the connection warm."""


@dataclass(frozen=True, slots=True)
class Finished:
    """The answer is complete."""

    finish_reason: str
    prompt_tokens: int
    completion_tokens: int


@dataclass(frozen=True, slots=True)
class SessionOpened:
    """A tool round opened this session (not shown to clients; a run records it)."""

    session_id: str


@dataclass(frozen=True, slots=True)
class StreamFailed:
    """The stream ends with this error."""

    code: str
    message: str
    type: str = "server_error"
    """OpenAI's kind of error (`GatewayError.type`)."""

    @classmethod
    def of(cls, error: GatewayError) -> StreamFailed:
        return cls(error.code, error.message, error.type)

    def body(self) -> dict[str, dict[str, str | None]]:
        """The error as OpenAI streams it."""
        return {
            "error": {"message": self.message, "type": self.type, "param": None, "code": self.code}
        }


@dataclass(frozen=True, slots=True)
class Resumed:
    """Another replica took the run over; what the model says next starts its turn again."""

    replica: str


@dataclass(frozen=True, slots=True)
class Ended:
    """The run is over: nothing follows."""


@dataclass(frozen=True, slots=True)
class Reattach:
    """This replica is stopping: continue at `url`, sending `last_event_id`."""

    url: str
    last_event_id: int


LoggedEvent = (
    ContentDelta
    | ClientToolCalls
    | ApprovalNotice
    | ToolEvent
    | Finished
    | StreamFailed
    | Resumed
    | Ended
)


def to_json(event: LoggedEvent) -> bytes:
    """The form an event takes in a run's log."""
    match event:
        case ContentDelta(text):
            return orjson.dumps({"k": "content", "text": text})
        case ClientToolCalls(calls):
            return orjson.dumps({"k": "client_calls", "calls": calls})
        case ApprovalNotice(session):
            return orjson.dumps({"k": "approval", "session": session.model_dump(mode="json")})
        case ToolEvent():
            return orjson.dumps({"k": "tool", **event.payload()})
        case Finished(reason, prompt, completion):
            return orjson.dumps({"k": "finish", "reason": reason, "usage": [prompt, completion]})
        case StreamFailed(code, message, kind):
            return orjson.dumps({"k": "error", "code": code, "message": message, "type": kind})
        case Resumed(replica):
            return orjson.dumps({"k": "resumed", "replica": replica})
        case Ended():
            return orjson.dumps({"k": "end"})


def from_json(raw: str | bytes) -> LoggedEvent:
    """An event read back from a run's log."""
    data = orjson.loads(raw)
    match data.pop("k"):
        case "content":
            return ContentDelta(data["text"])
        case "client_calls":
            return ClientToolCalls(data["calls"])
        case "approval":
            return ApprovalNotice(ApprovalSession.model_validate(data["session"]))
        case "tool":
            kind, call_id, name = data.pop("type"), data.pop("tool_call_id"), data.pop("name")
            return ToolEvent(kind, call_id, name, data)
        case "finish":
            return Finished(data["reason"], *data["usage"])
        case "error":
            return StreamFailed(data["code"], data["message"], data.get("type", "server_error"))
        case "resumed":
            return Resumed(data["replica"])
        case _:
            return Ended()


Item = tuple[int, LoggedEvent] | Heartbeat | Reattach
"""What a run's listener takes: a numbered event, a heartbeat when idle, or where to go."""

Event = (
    TextPieces
    | ContentDelta
    | ClientToolCalls
    | ApprovalNotice
    | ToolEvent
    | Heartbeat
    | Finished
    | SessionOpened
    | StreamFailed
    | Resumed
    | Ended
)
