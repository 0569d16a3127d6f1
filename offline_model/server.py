"""HTTP face of the offline model: OpenAI Chat Completions, streamed or not, byte-compatible."""

from __future__ import annotations

import argparse
import asyncio
import secrets
import time
from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass
from typing import Any

import orjson
import structlog
import uvicorn
from starlette.applications import Starlette
from starlette.exceptions import HTTPException
from starlette.middleware import Middleware
from starlette.requests import Request
from starlette.responses import Response, StreamingResponse
from starlette.routing import Route

from core import logs
from core.asgi import ResponseStart
from core.settings import OfflineModelSettings, Settings
from offline_model.script import (
    Reply,
    argument_pieces,
    content_text,
    decide,
    text_pieces,
    word_count,
)

log = structlog.stdlib.get_logger(__name__)

MODEL_ID = "offline-model"

_SSE_HEADERS = {"Cache-Control": "no-cache", "X-Accel-Buffering": "no"}
_DONE = b"data: [DONE]\n\n"


class RequestError(Exception):
    """A request OpenAI would reject with 400 invalid_request_error."""

    def __init__(self, message: str, code: str | None, param: str | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.code = code
        self.param = param


@dataclass(frozen=True, slots=True)
class ChatRequest:
    """The parts of a chat completion request the offline model looks at."""

    model: str
    messages: list[dict[str, Any]]
    tools: list[dict[str, Any]]
    stream: bool
    include_usage: bool


def parse_request(body: bytes) -> ChatRequest:
    """Decode and check a request body; raise RequestError the way OpenAI would answer 400."""
    try:
        data = orjson.loads(body)
    except orjson.JSONDecodeError as exc:
        raise RequestError(
            f"We could not parse the JSON body of your request: {exc}", "invalid_json"
        ) from exc
    if not isinstance(data, dict):
        raise RequestError("The request body must be a JSON object.", "invalid_type")
    messages = data.get("messages")
    if messages is None:
        raise RequestError(
            "Missing required parameter: 'messages'.", "missing_required_parameter", "messages"
        )
    if not isinstance(messages, list) or not messages:
        raise RequestError(
            "Invalid 'messages': expected a non-empty array.", "invalid_value", "messages"
        )
    if not all(isinstance(m, dict) and isinstance(m.get("role"), str) for m in messages):
        raise RequestError(
            "Invalid 'messages': every message must be an object with a 'role'.",
            "invalid_type",
            "messages",
        )
    tools = data.get("tools") or []
    if not isinstance(tools, list) or not all(isinstance(t, dict) for t in tools):
        raise RequestError(
            "Invalid 'tools': expected an array of objects.", "invalid_type", "tools"
        )
    model = data.get("model")
    options = data.get("stream_options")
    return ChatRequest(
        model=model if isinstance(model, str) and model else MODEL_ID,
        messages=messages,
        tools=tools,
        stream=data.get("stream") is True,
        include_usage=isinstance(options, dict) and options.get("include_usage") is True,
    )


def usage(request: ChatRequest, reply: Reply) -> dict[str, int]:
    """Token counts in words: prompt contents, and one per streamed delta of the reply."""
    prompt = sum(word_count(content_text(m.get("content"))) for m in request.messages)
    if reply.tool_calls:
        completion = sum(1 + len(argument_pieces(c.arguments_json())) for c in reply.tool_calls)
    else:
        completion = len(text_pieces(reply.text))
    return {
        "prompt_tokens": prompt,
        "completion_tokens": completion,
        "total_tokens": prompt + completion,
    }


def completion_object(
    request: ChatRequest, reply: Reply, completion_id: str, created: int
) -> dict[str, Any]:
    """The non-streamed `chat.completion` answer."""
    message: dict[str, Any] = {
        "role": "assistant",
        "content": None if reply.tool_calls else reply.text,
        "refusal": None,
        "annotations": [],
    }
    if reply.tool_calls:
        message["tool_calls"] = [
            {
                "id": call.id,
                "type": "function",
                "function": {"name": call.name, "arguments": call.arguments_json()},
            }
            for call in reply.tool_calls
        ]
    return {
        "id": completion_id,
        "object": "chat.completion",
        "created": created,
        "model": request.model,
        "system_fingerprint": None,
        "choices": [
            {"index": 0, "message": message, "logprobs": None, "finish_reason": reply.finish_reason}
        ],
        "usage": usage(request, reply),
    }


def stream_events(
    request: ChatRequest, reply: Reply, completion_id: str, created: int
) -> list[bytes]:
    """Every SSE event of a streamed answer, `[DONE]` included, ready to write."""
    envelope = {
        "id": completion_id,
        "object": "chat.completion.chunk",
        "created": created,
        "model": request.model,
        "system_fingerprint": None,
    }
    # Chunks differ only by their delta: encode the envelope once and splice each delta in.
    head = b"data: " + orjson.dumps(envelope)[:-1] + b',"choices":[{"index":0,"delta":'
    # OpenAI adds "usage":null to every chunk once usage was asked for.
    tail_usage = b',"usage":null' if request.include_usage else b""
    tail = b',"logprobs":null,"finish_reason":null}]' + tail_usage + b"}\n\n"

    deltas: list[dict[str, Any]] = []
    if reply.tool_calls:
        deltas.append({"role": "assistant", "content": None})
        for index, call in enumerate(reply.tool_calls):
            first = {
                "index": index,
                "id": call.id,
                "type": "function",
                "function": {"name": call.name, "arguments": ""},
            }
            deltas.append({"tool_calls": [first]})
            deltas.extend(
                {"tool_calls": [{"index": index, "function": {"arguments": piece}}]}
                for piece in argument_pieces(call.arguments_json())
            )
    else:
        deltas.append({"role": "assistant", "content": ""})
        deltas.extend({"content": piece} for piece in text_pieces(reply.text))

    events = [head + orjson.dumps(delta) + tail for delta in deltas]
    finish = orjson.dumps(reply.finish_reason)
    events.append(
        head + b'{},"logprobs":null,"finish_reason":' + finish + b"}]" + tail_usage + b"}\n\n"
    )
    if request.include_usage:
        final = {**envelope, "choices": [], "usage": usage(request, reply)}
        events.append(b"data: " + orjson.dumps(final) + b"\n\n")
    events.append(_DONE)
    return events


async def _paced(events: list[bytes], delay_s: float) -> AsyncIterator[bytes]:
    """Yield the events with a pause between them, like tokens arriving from a model."""
    for index, event in enumerate(events):
        if index:
            await asyncio.sleep(delay_s)
        yield event


async def _at_once(events: list[bytes]) -> AsyncIterator[bytes]:
    """Yield the whole stream as one write: with no delay, per-event sends are pure overhead."""
    yield b"".join(events)


def _json(data: object, status_code: int = 200) -> Response:
    """A JSON response encoded with orjson."""
    return Response(orjson.dumps(data), status_code=status_code, media_type="application/json")


def _error(message: str, code: str | None, param: str | None, status_code: int) -> Response:
    """An OpenAI-shaped error response."""
    error = {"message": message, "type": "invalid_request_error", "param": param, "code": code}
    return _json({"error": error}, status_code)


def create_app(settings: OfflineModelSettings) -> Starlette:
    """The offline model's ASGI app: chat completions, model list and health check."""
    delay_s = settings.token_delay_s
    reply_words = settings.reply_words

    async def chat_completions(request: Request) -> Response:
        try:
            chat = parse_request(await request.body())
        except RequestError as exc:
            return _error(exc.message, exc.code, exc.param, 400)
        reply = decide(chat.messages, chat.tools, reply_words)
        completion_id = "chatcmpl-" + secrets.token_hex(12)
        created = int(time.time())
        if not chat.stream:
            return _json(completion_object(chat, reply, completion_id, created))
        events = stream_events(chat, reply, completion_id, created)
        body = _paced(events, delay_s) if delay_s > 0 else _at_once(events)
        return StreamingResponse(body, media_type="text/event-stream", headers=_SSE_HEADERS)

    async def models(request: Request) -> Response:
        model = {"id": MODEL_ID, "object": "model", "created": 0, "owned_by": "offline"}
        return _json({"object": "list", "data": [model]})

    async def health(request: Request) -> Response:
        return _json({"status": "ok"})

    async def http_error(request: Request, exc: Exception) -> Response:
        # Unknown routes and methods answer in OpenAI's error shape, not Starlette's text.
        status_code = exc.status_code if isinstance(exc, HTTPException) else 500
        detail = exc.detail if isinstance(exc, HTTPException) else "Internal error"
        return _error(str(detail), None, None, status_code)

    routes = [
        Route("/v1/chat/completions", chat_completions, methods=["POST"]),
        Route("/v1/models", models, methods=["GET"]),
        Route("/health", health, methods=["GET"]),
    ]
    return Starlette(
        routes=routes,
        middleware=[Middleware(ResponseStart), Middleware(logs.AccessLog)],
        exception_handlers={HTTPException: http_error},
    )


def main(argv: Sequence[str] | None = None) -> None:
    """Run the offline model with uvicorn; --host/--port override the settings."""
    parser = argparse.ArgumentParser(prog="offline-model", description=__doc__)
    parser.add_argument("--host", help="address to listen on")
    parser.add_argument("--port", type=int, help="port to listen on")
    args = parser.parse_args(argv)
    settings = Settings()
    offline = settings.offline
    overrides = {key: value for key, value in vars(args).items() if value is not None}
    if overrides:
        offline = offline.model_copy(update=overrides)
    logs.configure(
        "offline_model",
        replica=f"{offline.host}:{offline.port}",
        fmt=settings.log_format,
        level=settings.log_level,
        log_arguments=settings.log_arguments,
    )
    log.info("offline_model_starting", host=offline.host, port=offline.port)
    app = create_app(offline)
    # log_config=None: logs.configure's handler renders uvicorn's own records too.
    uvicorn.run(app, host=offline.host, port=offline.port, log_config=None, log_level="warning")
