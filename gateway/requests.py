"""Reading and validating request bodies: size-bounded, JSON only, pydantic models."""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any, Literal, TypeVar

import orjson
from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    ValidationError,
    field_validator,
    model_validator,
)
from starlette.requests import Request

from core.errors import BodyTooLarge, InvalidRequest, UnsupportedMediaType

_M = TypeVar("_M", bound=BaseModel)


async def read_json(request: Request, max_bytes: int) -> Any:
    """The body as JSON: `UnsupportedMediaType` unless declared `application/json`,
    `BodyTooLarge` past `max_bytes`, `InvalidRequest` when malformed."""
    require_json_content_type(request)
    declared = request.headers.get("content-length", "").lstrip("0") or "0"
    if _is_ascii_int(declared) and (len(declared) > 18 or int(declared) > max_bytes):
        raise BodyTooLarge(f"request body is {declared[:40]} bytes; the limit is {max_bytes}")
    body = bytearray()
    async for part in request.stream():
        body += part
        if len(body) > max_bytes:
            raise BodyTooLarge(f"request body exceeds the limit of {max_bytes} bytes")
    try:
        return orjson.loads(body)
    except orjson.JSONDecodeError as error:
        raise InvalidRequest(f"request body is not valid JSON: {error}") from error


def require_json_content_type(request: Request) -> None:
    """`UnsupportedMediaType` unless `Content-Type` is `application/json` (parameters
    allowed): a browser page can post `text/plain` across origins without asking (CSRF)."""
    declared = request.headers.get("content-type", "")
    if declared.partition(";")[0].strip().lower() != "application/json":
        shown = repr(declared[:100]) if declared else "none"
        raise UnsupportedMediaType(
            f"Content-Type: the body must be sent as 'application/json', not {shown}"
        )


def query_int(params: Mapping[str, str], name: str, default: int, low: int, high: int) -> int:
    """An integer query parameter within [low, high]; `InvalidRequest` naming it otherwise."""
    return parse_int(params.get(name, str(default)), name, low, high)


def parse_int(raw: str, name: str, low: int, high: int) -> int:
    """`raw` as an integer within [low, high] (0 <= low): ASCII digits only, so no sign,
    no Unicode digits ('²', '٣') and no 5000-digit numbers; `InvalidRequest` naming it."""
    digits = raw.lstrip("0") or "0"
    if not _is_ascii_int(raw) or len(digits) > len(str(high)) or not low <= int(digits) <= high:
        raise InvalidRequest(f"{name}: must be an integer from {low} to {high}")
    return int(digits)


def _is_ascii_int(raw: str) -> bool:
    # str.isdigit alone is true for '²' and other digits int() refuses or reads differently.
    return raw.isascii() and raw.isdigit()


def validate(model: type[_M], data: Any) -> _M:
    """Validate `data`; the first problem, with its location, becomes `InvalidRequest`."""
    try:
        return model.model_validate(data)
    except ValidationError as error:
        first = error.errors()[0]
        where = ".".join(str(part) for part in first["loc"]) or "body"
        param = where if first["loc"] else None
        raise InvalidRequest(f"{where}: {first['msg']}", param) from error


class StrictBody(BaseModel):
    """A request body of the gateway's own API: JSON types exactly as its document says
    (no `"1"` for 1, no 0 for false), as OpenAI's API takes them. The first version's
    bodies keep their lenient reading for their clients."""

    model_config = ConfigDict(strict=True)


class FunctionCall(StrictBody):
    name: str
    arguments: str


class MessageToolCall(StrictBody):
    id: str
    type: Literal["function"] = "function"
    function: FunctionCall


class ChatMessage(StrictBody):
    """One message of an OpenAI chat request."""

    model_config = ConfigDict(extra="ignore")

    role: Literal["system", "developer", "user", "assistant", "tool"]
    content: str | list[dict[str, Any]] | None = None
    name: str | None = None
    tool_calls: list[MessageToolCall] | None = None
    tool_call_id: str | None = None

    def as_dict(self) -> dict[str, Any]:
        return self.model_dump(exclude_none=True)


class FunctionDefinition(StrictBody):
    name: str = Field(pattern=r"^[A-Za-z0-9_-]{1,64}$")
    description: str = ""
    parameters: dict[str, Any] = Field(default_factory=lambda: {"type": "object", "properties": {}})
    strict: bool | None = None


class ClientTool(StrictBody):
    type: Literal["function"]
    function: FunctionDefinition


class StreamOptions(StrictBody):
    include_usage: bool = False


_HANDLED = frozenset({"model", "messages", "stream", "stream_options", "tools", "n"})
"""Fields the gateway acts on itself rather than passing on."""


class ChatCompletionRequest(StrictBody):
    """`POST /v1/chat/completions`. Fields the gateway does not know are kept, and those
    in `upstream_fields` go to the upstream as they are."""

    model_config = ConfigDict(extra="allow")

    model: str | None = None
    messages: list[ChatMessage] = Field(min_length=1)
    stream: bool = False
    stream_options: StreamOptions | None = None
    tools: list[ClientTool] = Field(default_factory=list)
    tool_choice: str | dict[str, Any] | None = None
    temperature: float | None = Field(default=None, ge=0, le=2)
    top_p: float | None = Field(default=None, ge=0, le=1)
    max_tokens: int | None = Field(default=None, ge=1)
    max_completion_tokens: int | None = Field(default=None, ge=1)
    stop: str | list[str] | None = None
    seed: int | None = None
    n: int = Field(default=1, ge=1, le=1)
    logprobs: bool | None = None
    modalities: list[str] | None = None

    @model_validator(mode="after")
    def _only_what_the_gateway_relays(self) -> ChatCompletionRequest:
        # Answers are relayed as text and tool calls: log probabilities and audio would be
        # dropped on the way, so they are refused rather than silently lost.
        if self.logprobs or (self.model_extra or {}).get("top_logprobs") is not None:
            raise ValueError("logprobs: the gateway does not relay log probabilities")
        if self.modalities and set(self.modalities) != {"text"}:
            raise ValueError("modalities: the gateway relays text only")
        return self

    def upstream_params(self, fields: Iterable[str]) -> dict[str, Any]:
        """The request's fields that go to the upstream as they are (`fields` allowed)."""
        sent = self.model_dump(exclude_none=True, exclude=set(_HANDLED), exclude_unset=True)
        allowed = set(fields)
        return {name: value for name, value in sent.items() if name in allowed}


class LegacyMessage(BaseModel):
    role: Literal["system", "user", "assistant"]
    content: str


class LegacyChatRequest(BaseModel):
    """The first version's `POST /v1/chat/completion`."""

    messages: list[LegacyMessage] = Field(min_length=1)
    model: str | None = None
    temperature: float | None = Field(default=None, ge=0, le=2)
    max_tokens: int | None = Field(default=None, ge=1)

    @field_validator("model")
    @classmethod
    def _blank_is_default(cls, value: str | None) -> str | None:
        return value or None


class LegacyApproveRequest(BaseModel):
    """The first version's `POST /v1/chat/approve`."""

    sessionid: str = Field(min_length=1, max_length=128)
    approved: bool


class Grant(StrictBody):
    """With an approval: allow this tool without asking, in this conversation, for a while."""

    model_config = ConfigDict(extra="forbid")

    ttl_s: int = Field(default=3600, ge=1)
    """At most `grant_max_ttl_s` (a setting, 1 hour by default)."""
    same_arguments: bool = True
    """Only calls with exactly these arguments (by hash) are covered; false covers any."""


class CallDecision(StrictBody):
    """One call's decision in `{"calls": [...]}`."""

    model_config = ConfigDict(extra="forbid")

    tool_call_id: str = Field(min_length=1, max_length=128)
    decision: Literal["approve", "reject", "edit", "respond"]
    reason: str = Field(default="", max_length=2000)
    arguments: dict[str, Any] | None = None
    """`edit`: the new arguments (the tool's schema applies; the name cannot change)."""
    result: Any = None
    """`respond`: the tool result to give the model instead of running the tool."""
    arguments_sha256: str | None = Field(default=None, pattern=r"^[0-9a-f]{64}$")
    """The hash of the arguments the approver saw; a mismatch is refused (409)."""
    grant: Grant | None = None

    @model_validator(mode="after")
    def _fields_fit_the_decision(self) -> CallDecision:
        if self.decision == "edit" and self.arguments is None:
            raise ValueError("an 'edit' needs 'arguments'")
        if self.decision != "edit" and self.arguments is not None:
            raise ValueError("'arguments' belongs to an 'edit' only")
        if self.decision == "respond" and self.result is None:
            raise ValueError("a 'respond' needs 'result'")
        if self.decision != "respond" and self.result is not None:
            raise ValueError("'result' belongs to a 'respond' only")
        if self.grant is not None and self.decision not in ("approve", "edit"):
            raise ValueError("a 'grant' goes with 'approve' or 'edit' only")
        return self


class DecisionRequest(StrictBody):
    """`POST /v1/approvals/{id}/decision`: one decision for every pending call, or per call."""

    model_config = ConfigDict(extra="forbid")

    decision: Literal["approve", "reject"] | None = None
    reason: str = Field(default="", max_length=2000)
    calls: list[CallDecision] | None = Field(default=None, min_length=1, max_length=128)

    @model_validator(mode="after")
    def _one_form(self) -> DecisionRequest:
        if (self.decision is None) == (self.calls is None):
            raise ValueError("send either 'decision' (for every call) or 'calls' (per call)")
        if self.calls is not None:
            ids = [c.tool_call_id for c in self.calls]
            if len(set(ids)) != len(ids):
                raise ValueError("each tool_call_id may appear once")
        return self
