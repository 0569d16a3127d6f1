"""Approval sessions and tool calls: their statuses, allowed transitions and stored form.

A session is one round of tool calls the model asked for. Its record is one
Redis hash (see `core.keys.Keys.session`); per-call state sits in fields named
`<kind>:<tool_call_id>` so that each transition script changes only what it
must. Nothing read back is evaluated: every field is JSON or a plain string,
validated here.
"""

from __future__ import annotations

import hashlib
from collections.abc import Mapping
from enum import StrEnum
from typing import Any, Literal, TypeVar

import orjson
import rfc8785
from pydantic import BaseModel, Field

from core.settings import PolicyMode

_M = TypeVar("_M", bound=BaseModel)


class SessionStatus(StrEnum):
    """Where an approval session is in its life."""

    PENDING = "pending"
    """Waiting for a human decision on at least one call."""
    APPROVED = "approved"
    """Every call is decided and at least one may run."""
    REJECTED = "rejected"
    """Every call is decided and none may run."""
    EXPIRED = "expired"
    """The deadline passed first; undecided calls count as rejected."""
    RUNNING = "running"
    """One replica has claimed the continuation: tools are queued, the model continues."""
    COMPLETED = "completed"
    """The continuation finished."""
    FAILED = "failed"
    """The continuation broke (upstream error); the decisions stand."""


class CallStatus(StrEnum):
    """Where one tool call is: first its decision, then its execution."""

    PENDING = "pending"
    """Waiting for a decision."""
    APPROVED = "approved"
    """May run (by a person's decision or by `auto` policy); not queued yet."""
    REJECTED = "rejected"
    """A person said no; the model gets the reason."""
    DENIED = "denied"
    """Policy said no; it never runs."""
    EXPIRED = "expired"
    """Undecided at the deadline; treated as rejected."""
    QUEUED = "queued"
    """Handed to the workers."""
    RUNNING = "running"
    """A worker started it: it may have had effects."""
    SUCCEEDED = "succeeded"
    """Ran and returned a result."""
    FAILED = "failed"
    """Ran and raised, or timed out; the error is the result the model sees."""
    RESPONDED = "responded"
    """Not run: a person supplied its result instead."""
    UNKNOWN = "unknown"
    """The worker running it died; it may have had effects and is never run again."""
    RELEASED = "released"
    """An approved call of a client-declared tool, handed to the client to run; its result
    comes in the client's next request."""


SESSION_TRANSITIONS: Mapping[SessionStatus, frozenset[SessionStatus]] = {
    SessionStatus.PENDING: frozenset(
        {SessionStatus.APPROVED, SessionStatus.REJECTED, SessionStatus.EXPIRED}
    ),
    SessionStatus.APPROVED: frozenset({SessionStatus.RUNNING}),
    SessionStatus.REJECTED: frozenset({SessionStatus.RUNNING}),
    SessionStatus.EXPIRED: frozenset({SessionStatus.RUNNING}),
    # running → running: a runner with a newer lease (fencing token) takes over (BEGIN_RUN).
    SessionStatus.RUNNING: frozenset(
        {SessionStatus.RUNNING, SessionStatus.COMPLETED, SessionStatus.FAILED}
    ),
    SessionStatus.COMPLETED: frozenset(),
    SessionStatus.FAILED: frozenset(),
}

CALL_TRANSITIONS: Mapping[CallStatus, frozenset[CallStatus]] = {
    CallStatus.PENDING: frozenset(
        {CallStatus.APPROVED, CallStatus.REJECTED, CallStatus.RESPONDED, CallStatus.EXPIRED}
    ),
    CallStatus.APPROVED: frozenset({CallStatus.QUEUED, CallStatus.RELEASED}),
    CallStatus.QUEUED: frozenset({CallStatus.RUNNING}),
    CallStatus.RUNNING: frozenset({CallStatus.SUCCEEDED, CallStatus.FAILED, CallStatus.UNKNOWN}),
    CallStatus.REJECTED: frozenset(),
    CallStatus.DENIED: frozenset(),
    CallStatus.EXPIRED: frozenset(),
    CallStatus.SUCCEEDED: frozenset(),
    CallStatus.FAILED: frozenset(),
    CallStatus.RESPONDED: frozenset(),
    CallStatus.UNKNOWN: frozenset(),
    CallStatus.RELEASED: frozenset(),
}

CALL_DONE_STATUSES = frozenset(
    {
        CallStatus.REJECTED,
        CallStatus.DENIED,
        CallStatus.EXPIRED,
        CallStatus.SUCCEEDED,
        CallStatus.FAILED,
        CallStatus.RESPONDED,
        CallStatus.UNKNOWN,
        CallStatus.RELEASED,
    }
)
"""A call in one of these needs nothing more from the workers (a released call's tool message
is the client's)."""


def sources_of(target: SessionStatus) -> list[str]:
    """The other statuses a session may move to `target` from, as script arguments (staying
    in `target`, as a lease takeover does, is the script's own fenced check)."""
    return sorted(
        s.value for s, targets in SESSION_TRANSITIONS.items() if target in targets and s != target
    )


def arguments_sha256(arguments: Mapping[str, Any]) -> str:
    """SHA-256 (hex) of the RFC 8785 canonical JSON of a call's arguments."""
    return hashlib.sha256(rfc8785.dumps(dict(arguments))).hexdigest()


DecisionKind = Literal["approve", "reject", "edit", "respond"]


class Decision(BaseModel):
    """What was decided about one call, by whom or by what."""

    decision: DecisionKind
    reason: str = ""
    actor: str = "anonymous"
    """Who decided: `policy`, `deadline`, `grant` (a standing grant), or the approver."""
    decided_at: float = 0.0
    arguments: dict[str, Any] | None = None
    """`edit`: the arguments the call runs with instead of the model's."""
    arguments_sha256: str = ""
    """`approve`/`edit`: the hash of exactly what may run (the worker checks it)."""
    result: str | None = None
    """`respond`: the result a person supplied instead of running the tool."""


class ToolResult(BaseModel):
    """The outcome of running one call, as the worker stored it."""

    status: Literal["succeeded", "failed", "unknown"]
    content: str
    worker: str = ""
    duration_ms: float = 0.0


class ToolCall(BaseModel):
    """One call the model asked for, as fixed when the session was created."""

    id: str
    """The gateway's id for the call, unique in the session (the model's id is not trusted)."""
    name: str
    arguments: dict[str, Any]
    arguments_sha256: str
    policy: PolicyMode
    policy_reason: str = ""
    """Why policy gave this mode (the rule, the condition, the untrusted context)."""
    side: Literal["server", "client"] = "server"
    """`client`: a tool the request declared, which its client runs once approved."""
    upstream_id: str = ""
    """The id the model's history uses for this call: the model's own when it was present
    and unique in its turn, else the gateway's. Used for nothing else."""


class ToolCallView(ToolCall):
    """A call with its current status, decision and result, as the API shows it."""

    status: CallStatus
    decision: Decision | None = None
    result: ToolResult | None = None


class Provenance(BaseModel):
    """A tool result that was in the conversation before the session's calls."""

    tool_call_id: str
    name: str
    untrusted: bool
    """The tool's output may carry text the model should not obey (`untrusted_output`)."""


class ApprovalSession(BaseModel):
    """The approvals API's view of one session."""

    id: str
    object: Literal["approval_session"] = "approval_session"
    status: SessionStatus
    protocol: Literal["openai", "legacy"]
    model: str
    created_at: float
    expires_at: float
    tenant: str = "default"
    requester: str = "anonymous"
    """The API key (by name) whose request opened the session."""
    conversation: str = ""
    """The gateway-issued conversation id (`X-Conversation-Id`) that grants are scoped to."""
    conversation_label: str = ""
    """A conversation name the client chose itself: shown, never used for grants."""
    request_id: str = ""
    """The `X-Request-Id` of the chat request that opened the session."""
    tainted: bool = False
    """Untrusted tool output was in the conversation before these calls."""
    provenance: list[Provenance] = Field(default_factory=list)
    """The tool results that came before these calls, oldest first (the last few)."""
    tool_calls: list[ToolCallView]


class Continuation(BaseModel):
    """What a replica needs to continue the conversation after the decision."""

    messages: list[dict[str, Any]]
    """The conversation up to and including the assistant message with the calls."""
    params: dict[str, Any] = Field(default_factory=dict)
    """Upstream parameters of the original request (temperature, max_tokens, ...)."""
    client_tools: list[dict[str, Any]] = Field(default_factory=list)
    rounds_used: int = 1


_NO_CONTINUATION = Continuation(messages=[])
"""What a record read `view_only` carries: never continue a conversation from it."""


class SessionRecord(BaseModel):
    """A session as read back from its hash."""

    view: ApprovalSession
    continuation: Continuation
    log_id: str = ""
    """The run log this session's events go to ("" when its request is not a logged stream)."""
    trace: str = ""
    """The `traceparent` of the chat request's span ("" while traces are off: core.tracing)."""
    wait_span: str = ""
    """The span id chosen for the session's approval wait (core.tracing)."""

    @property
    def id(self) -> str:
        return self.view.id

    @property
    def status(self) -> SessionStatus:
        return self.view.status

    @classmethod
    def from_hash(cls, fields: Mapping[str, str], *, view_only: bool = False) -> SessionRecord:
        """Validate the raw hash fields of a session; with `view_only`, leave the
        continuation (the whole conversation: the largest field) unparsed and empty."""
        calls = [ToolCall.model_validate(c) for c in orjson.loads(fields["calls"])]
        views = [
            ToolCallView(
                **call.model_dump(),
                status=CallStatus(fields[f"status:{call.id}"]),
                decision=_optional(Decision, fields.get(f"decision:{call.id}")),
                result=_optional(ToolResult, fields.get(f"result:{call.id}")),
            )
            for call in calls
        ]
        view = ApprovalSession(
            id=fields["id"],
            status=SessionStatus(fields["status"]),
            protocol=fields["protocol"],  # type: ignore[arg-type]
            model=fields["model"],
            created_at=float(fields["created_at"]),
            expires_at=float(fields["expires_at"]),
            tenant=fields.get("tenant", "default"),
            requester=fields.get("requester", "anonymous"),
            conversation=fields.get("conversation", ""),
            conversation_label=fields.get("conversation_label", ""),
            request_id=fields.get("request_id", ""),
            tainted=fields.get("tainted") == "1",
            provenance=_provenance(fields.get("provenance")),
            tool_calls=views,
        )
        continuation = (
            _NO_CONTINUATION
            if view_only
            else Continuation.model_validate_json(fields["continuation"])
        )
        return cls(
            view=view,
            continuation=continuation,
            log_id=fields.get("log", ""),
            trace=fields.get("trace", ""),
            wait_span=fields.get("wait_span", ""),
        )


def new_session_fields(record: SessionRecord, initial: Mapping[str, Decision]) -> dict[str, str]:
    """The hash fields of a new session; `initial` holds the decisions policy already made."""
    session, continuation = record.view, record.continuation
    fields = {
        "id": session.id,
        "log": record.log_id,
        "status": session.status.value,
        "protocol": session.protocol,
        "model": session.model,
        "created_at": repr(session.created_at),
        "expires_at": repr(session.expires_at),
        "tenant": session.tenant,
        "requester": session.requester,
        "conversation": session.conversation,
        "conversation_label": session.conversation_label,
        "request_id": session.request_id,
        "tainted": "1" if session.tainted else "",
        "provenance": orjson.dumps([p.model_dump() for p in session.provenance]).decode(),
        "calls": orjson.dumps(
            [c.model_dump(mode="json", include=_CALL_FIELDS) for c in session.tool_calls]
        ).decode(),
        "continuation": continuation.model_dump_json(),
    }
    if record.trace:
        fields |= {"trace": record.trace, "wait_span": record.wait_span}
    for call in session.tool_calls:
        fields[f"status:{call.id}"] = call.status.value
        if call.id in initial:
            fields[f"decision:{call.id}"] = initial[call.id].model_dump_json(exclude_none=True)
    return fields


_CALL_FIELDS = set(ToolCall.model_fields)


def _provenance(raw: str | None) -> list[Provenance]:
    return [Provenance.model_validate(p) for p in orjson.loads(raw)] if raw else []


def _optional(model: type[_M], raw: str | None) -> _M | None:
    return None if raw is None else model.model_validate_json(raw)
