"""`POST /v1/chat/completions`: OpenAI Chat Completions, streamed or not.

Gateway information rides in extra top-level fields (`approval`, `tool_event`)
of chunks whose delta is empty, so clients that ignore them keep working.
"""

from __future__ import annotations

import logging
import secrets
import time
from collections.abc import AsyncIterator
from typing import Any

from starlette.requests import Request
from starlette.responses import JSONResponse, Response

from core.errors import InvalidRequest
from gateway import sse
from gateway.conversation import ChatContext, Engine, converse
from gateway.events import (
    ApprovalNotice,
    ClientToolCalls,
    ContentDelta,
    Event,
    Finished,
    Heartbeat,
    ToolEvent,
)
from gateway.requests import ChatCompletionRequest, read_json, validate

log = logging.getLogger(__name__)


async def chat_completions(request: Request) -> Response:
    engine: Engine = request.app.state.engine
    engine.check_redis()
    body = validate(ChatCompletionRequest, await read_json(request, engine.settings.max_body_bytes))
    _check_limits(engine, body)
    ctx = ChatContext(
        model=body.model or engine.settings.upstream_model,
        protocol="openai",
        hold=True,
        params=body.upstream_params()
        | ({"tool_choice": body.tool_choice} if body.tool_choice else {}),
        client_tools=[tool.model_dump() for tool in body.tools],
    )
    events = converse(engine, ctx, [m.as_dict() for m in body.messages])
    chunks = _ChunkWriter(ctx.model)
    if body.stream:
        include_usage = bool(body.stream_options and body.stream_options.include_usage)
        slots: sse.StreamSlots = request.app.state.stream_slots
        return slots.response(_stream(events, chunks, include_usage))
    return JSONResponse(await _complete(engine, events, chunks))


def _check_limits(engine: Engine, body: ChatCompletionRequest) -> None:
    if len(body.messages) > engine.settings.max_messages:
        raise InvalidRequest(f"messages: at most {engine.settings.max_messages} are allowed")
    clashes = {t.function.name for t in body.tools} & set(engine.toolbox.tools)
    if clashes:
        raise InvalidRequest(f"tools: {sorted(clashes)} clash with server-side tools")


class _ChunkWriter:
    """Builds `chat.completion.chunk` events of one completion."""

    def __init__(self, model: str) -> None:
        self.id = "chatcmpl-" + secrets.token_hex(12)
        self.model = model
        self.created = int(time.time())

    def chunk(
        self, delta: dict[str, Any], finish_reason: str | None = None, **extra: Any
    ) -> dict[str, Any]:
        choice = {"index": 0, "delta": delta, "logprobs": None, "finish_reason": finish_reason}
        return {
            "id": self.id,
            "object": "chat.completion.chunk",
            "created": self.created,
            "model": self.model,
            "system_fingerprint": None,
            "choices": [choice],
            **extra,
        }

    def usage(self, finished: Finished) -> dict[str, Any]:
        return {
            "prompt_tokens": finished.prompt_tokens,
            "completion_tokens": finished.completion_tokens,
            "total_tokens": finished.prompt_tokens + finished.completion_tokens,
        }


async def _stream(
    events: AsyncIterator[Event], chunks: _ChunkWriter, include_usage: bool
) -> AsyncIterator[bytes]:
    yield sse.data(chunks.chunk({"role": "assistant", "content": ""}))
    try:
        async for event in events:
            yield _render(event, chunks, include_usage)
    except sse.STREAM_ERRORS as raised:
        error = sse.as_gateway_error(raised)
        log.warning("stream %s ended by %s: %s", chunks.id, error.code, error.message)
        yield sse.data(error.body())
    yield sse.DONE


def _render(event: Event, chunks: _ChunkWriter, include_usage: bool) -> bytes:
    match event:
        case ContentDelta(text):
            return sse.data(chunks.chunk({"content": text}))
        case Heartbeat():
            return sse.HEARTBEAT
        case ApprovalNotice(session):
            return sse.data(chunks.chunk({}, approval=session.model_dump(mode="json")))
        case ToolEvent():
            return sse.data(chunks.chunk({}, tool_event=event.payload()))
        case ClientToolCalls(calls):
            indexed = [{"index": i, **call} for i, call in enumerate(calls)]
            return sse.data(chunks.chunk({"tool_calls": indexed}))
        case Finished():
            final = sse.data(chunks.chunk({}, finish_reason=event.finish_reason))
            if include_usage:
                usage = {**chunks.chunk({}), "choices": [], "usage": chunks.usage(event)}
                final += sse.data(usage)
            return final


async def _complete(
    engine: Engine, events: AsyncIterator[Event], chunks: _ChunkWriter
) -> dict[str, Any]:
    """Drive the conversation to its end and build one `chat.completion`."""
    text: list[str] = []
    message: dict[str, Any] = {"role": "assistant"}
    session_id: str | None = None
    finished = Finished("stop", 0, 0)
    async for event in events:
        match event:
            case ContentDelta(piece):
                text.append(piece)
            case ClientToolCalls(calls):
                message["tool_calls"] = calls
            case ApprovalNotice(session):
                session_id = session.id
            case Finished():
                finished = event
    message["content"] = "".join(text) or None
    completion: dict[str, Any] = {
        "id": chunks.id,
        "object": "chat.completion",
        "created": chunks.created,
        "model": chunks.model,
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
        record = await engine.store.get(session_id)
        completion["approval"] = record.view.model_dump(mode="json")
    return completion
