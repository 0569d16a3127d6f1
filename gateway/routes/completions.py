"""`POST /v1/chat/completions`: OpenAI Chat Completions, streamed or not.

Gateway information rides in extra top-level fields (`approval`, `tool_event`,
`resumed`, `reattach`) of chunks whose delta is empty, so clients that ignore them
keep working. From its first approval notice on, a streamed request becomes a run
(`gateway.runs`) and this response is one of its listeners.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

import orjson
import structlog
from jsonschema.exceptions import SchemaError
from openai.types.chat import ChatCompletion
from pydantic.json_schema import SkipJsonSchema
from starlette.requests import Request
from starlette.responses import JSONResponse, Response

from core.errors import (
    BodyTooLarge,
    DecisionConflict,
    Forbidden,
    GatewayError,
    HistoryMismatch,
    IdempotencyKeyReused,
    InvalidRequest,
    Overloaded,
    RedisUnavailable,
    Unavailable,
    UnsupportedMediaType,
    UpstreamError,
    UpstreamRateLimited,
    UpstreamRejected,
)
from core.records import ApprovalSession, SessionStatus
from gateway import sse
from gateway.auth import Principal
from gateway.chunks import ChunkMeta, ChunkWriter
from gateway.conversation import converse
from gateway.events import (
    ApprovalNotice,
    ClientToolCalls,
    Ended,
    Event,
    Finished,
    Heartbeat,
    SessionOpened,
    StreamFailed,
    TextPieces,
)
from gateway.handoff import restore_history
from gateway.idempotent import Retry
from gateway.openapi import Operation, Param, Reply
from gateway.opening import client_checkers
from gateway.replica import Replica
from gateway.requests import ChatCompletionRequest, read_json, validate
from gateway.routes.chats import CONVERSATION_HEADER, chat_context, conversation_of
from gateway.routes.guard import replica_of, runs_of, slots_of
from gateway.routes.reattach import CHUNKS
from gateway.runs import RunRegistry

log = structlog.stdlib.get_logger(__name__)

NOTICE_HEADER = "x-approval-notice"
"""`content`: also say the approval notice as a content delta; `chunk`: only the extra field."""


class Completion(ChatCompletion):
    """A non-streamed answer (the schema of what `_complete` builds): OpenAI's
    `chat.completion`, with the approval session of its last round that waited."""

    approval: ApprovalSession | SkipJsonSchema[None] = None


async def chat_completions(request: Request, caller: Principal) -> Response:
    """Guarded: `requester`; refused while draining or while Redis is down."""
    replica, runs = replica_of(request), runs_of(request)
    raw = await read_json(request, replica.settings.max_body_bytes)
    body = validate(ChatCompletionRequest, raw)
    _check_limits(replica, body)
    conversation = conversation_of(request, caller)
    retry = Retry.of(replica, caller, request, raw)
    if retry is not None and (prior := await retry.claim(conversation[0])) is not None:
        repeated = await retry.repeat(runs, slots_of(request), prior, body.stream)
        repeated.headers[CONVERSATION_HEADER] = prior.conversation or conversation[0]
        return repeated
    ctx = chat_context(
        request,
        caller,
        conversation,
        model=body.model,
        protocol="openai",
        hold=True,
        params=body.upstream_params(replica.settings.upstream_fields),
        client_tools=[tool.model_dump(exclude_none=True) for tool in body.tools],
        logged=body.stream,
    )
    messages = [m.as_dict() for m in body.messages]
    include_usage = bool(body.stream_options and body.stream_options.include_usage)
    notice = request.headers.get(NOTICE_HEADER, "").lower()
    as_content = notice == "content" or (
        notice != "chunk" and replica.settings.approval_notice_as_content
    )
    meta = ChunkMeta.new(ctx.model, include_usage, as_content)
    headers = {CONVERSATION_HEADER: ctx.conversation}
    try:
        # A refused history is recorded for the request's retries like any answer.
        events = converse(replica, ctx, await restore_history(replica, ctx, messages))
        if body.stream:
            # The headers wait for the upstream's first answer, so an upstream that fails
            # before it gets a real HTTP status, which the SDKs retry as they would OpenAI.
            first = await anext(events)
        else:
            completion = await _complete(replica, events, ChunkWriter(meta))
    except GatewayError as error:
        if retry is not None:
            await retry.failed(error)
        raise
    if body.stream:
        body_stream = _stream(runs, _after(first, events), meta, retry)
        return slots_of(request).response(body_stream, headers)
    if retry is not None:
        await retry.answered(200, orjson.dumps(completion))
    return JSONResponse(completion, headers=headers)


async def _after(first: Event, rest: AsyncIterator[Event]) -> AsyncIterator[Event]:
    yield first
    async for event in rest:
        yield event


def _check_limits(replica: Replica, body: ChatCompletionRequest) -> None:
    if len(body.messages) > replica.settings.max_messages:
        raise InvalidRequest(f"messages: at most {replica.settings.max_messages} are allowed")
    names = [t.function.name for t in body.tools]
    if len(set(names)) != len(names):
        raise InvalidRequest("tools: each function name may be declared once", "tools")
    clashes = set(names) & set(replica.toolbox.tools)
    if clashes:
        raise InvalidRequest(f"tools: {sorted(clashes)} clash with server-side tools", "tools")
    try:  # the arguments of client calls are checked against these schemas
        client_checkers([tool.model_dump() for tool in body.tools])
    except SchemaError as error:
        message = f"tools: a parameters schema is invalid: {error.message[:200]}"
        raise InvalidRequest(message, "tools") from error


class _Chunks(ChunkWriter):
    """A streamed answer's chunks, numbered as they go."""

    def __init__(self, meta: ChunkMeta) -> None:
        super().__init__(meta)
        self.seq = 1
        """The number of the last chunk sent."""
        self.held = False
        """The answer became a run, which sent its end itself."""

    def failed(self, error: GatewayError) -> bytes:
        self.seq += 1
        return self.render(self.seq, StreamFailed.of(error))


async def _stream(
    runs: RunRegistry, events: AsyncIterator[Event], meta: ChunkMeta, retry: Retry | None
) -> AsyncIterator[bytes]:
    chunks = _Chunks(meta)
    yield chunks.role(chunks.seq)
    parts = _parts(runs, events, chunks, retry)
    async for part in sse.failures_as(
        parts, chunks.failed, "stream_failed", completion=meta.completion_id
    ):
        yield part
    if chunks.held:
        return
    if retry is not None:
        try:
            await retry.ended()
        except sse.STREAM_ERRORS as failure:  # its retries wait out the bound instead
            log.warning("retry_end_not_recorded", error=str(failure))
    yield chunks.render(chunks.seq + 1, Ended())


async def _parts(
    runs: RunRegistry, events: AsyncIterator[Event], chunks: _Chunks, retry: Retry | None
) -> AsyncIterator[bytes]:
    async for event in events:
        if isinstance(event, TextPieces):  # the hot path: the tokens of one upstream read
            yield chunks.contents(chunks.seq, event.pieces)
            chunks.seq += len(event.pieces)
            continue
        if isinstance(event, ApprovalNotice) and event.session.status is SessionStatus.PENDING:
            # From here on the request is a run; it goes on if this client goes away.
            run = await runs.start(event, events, chunks.seq, chunks.meta)
            if retry is not None:
                try:
                    await retry.became_run(run.log_id)
                except sse.STREAM_ERRORS as failure:  # the run goes on; its retry waits
                    log.warning("run_retry_not_recorded", run=run.log_id, error=str(failure))
            async for items in run.listen(chunks.seq):
                yield chunks.items(items)
            chunks.held = True
            return
        if isinstance(event, Heartbeat):
            yield sse.HEARTBEAT
        elif not isinstance(event, SessionOpened):
            chunks.seq += 1
            yield chunks.render(chunks.seq, event)


async def _complete(
    replica: Replica, events: AsyncIterator[Event], chunks: ChunkWriter
) -> dict[str, Any]:
    """Drive the conversation to its end and build one `chat.completion`."""
    text: list[str] = []
    message: dict[str, Any] = {"role": "assistant"}
    session_id: str | None = None
    finished = Finished("stop", 0, 0)
    async for event in events:
        match event:
            case TextPieces(pieces):
                text += pieces
            case ClientToolCalls(calls):
                message["tool_calls"] = calls
            case ApprovalNotice(session):
                session_id = session.id
            case Finished():
                finished = event
    message["content"] = "".join(text) or None
    completion: dict[str, Any] = {
        "id": chunks.meta.completion_id,
        "object": "chat.completion",
        "created": chunks.meta.created,
        "model": chunks.meta.model,
        "system_fingerprint": None,
        "choices": [
            {
                "index": 0,
                "message": message,
                "logprobs": None,
                "finish_reason": finished.finish_reason,
            }
        ],
        "usage": chunks.usage(finished),
    }
    if session_id is not None:
        record = await replica.store.get(session_id)
        completion["approval"] = record.view.model_dump(mode="json")
    return completion


OPERATIONS = (
    Operation(
        "POST",
        "/v1/chat/completions",
        "OpenAI Chat Completions, with risky tool calls held for a decision",
        {
            200: Reply(
                "`stream: false`: one `chat.completion`, after any decision. `stream: true`: "
                "`chat.completion.chunk` events, each with its sequence number as `id:`, "
                "gateway information in extra fields of chunks whose delta is empty "
                "(`approval`, `tool_event`, `resumed`, `reattach`), `: heartbeat` comments "
                'while held, an error as `data: {"error": ...}`, then `data: [DONE]`',
                Completion,
                stream=CHUNKS,
                headers={
                    CONVERSATION_HEADER: "The conversation grants are scoped to (on the answer "
                    "to a retry, the first request's)"
                },
            )
        },
        description="Needs the role `requester`. Server-side tools are offered to the model "
        "and their calls classified by policy; client tools pass through.",
        body=ChatCompletionRequest,
        params=(
            Param(CONVERSATION_HEADER, "The conversation this request belongs to", "header"),
            Param("Idempotency-Key", "A retry with this key is the same request", "header"),
            Param(
                NOTICE_HEADER,
                "`content`: also say an approval notice as text; `chunk`: only as a field; "
                "otherwise as `GATEWAY_APPROVAL_NOTICE_AS_CONTENT` says",
                "header",
            ),
        ),
        errors=(
            InvalidRequest,
            BodyTooLarge,
            UnsupportedMediaType,
            Forbidden,
            HistoryMismatch,
            IdempotencyKeyReused,
            DecisionConflict,
            UpstreamError,
            UpstreamRejected,
            UpstreamRateLimited,
            Unavailable,
            Overloaded,
            RedisUnavailable,
        ),
    ),
)
