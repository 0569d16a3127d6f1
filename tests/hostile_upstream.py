"""A scriptable hostile upstream: an OpenAI chat-completions server that answers whatever a test
scripted, so security tests can play a prompt-injected or compromised model against the gateway.

`python -m tests.hostile_upstream --port N`. A test registers a script (`POST /scripts`) and puts
its marker `[[script:KEY]]` in a user message; each completion request carrying the marker is
answered from the script and recorded (`GET /requests/{key}`). All state lives in this process.
"""

from __future__ import annotations

import argparse
import asyncio
import re
import secrets
import time
from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal

import orjson
import uvicorn
from pydantic import Base64Bytes, BaseModel, ConfigDict, Field, ValidationError
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import Response, StreamingResponse
from starlette.routing import Route

from offline_model.script import content_text

MARKER = re.compile(r"\[\[script:([^\]]+)\]\]")
_DONE = b"data: [DONE]\n\n"
_USAGE = {"prompt_tokens": 1, "completion_tokens": 1, "total_tokens": 2}


class Call(BaseModel):
    """One scripted tool call; `id` None leaves the id field out."""

    model_config = ConfigDict(extra="forbid")

    id: str | None = None
    name: str
    arguments: Any = Field(default_factory=dict)
    """A string is sent verbatim as the arguments text; anything else is JSON-encoded first."""

    def arguments_text(self) -> str:
        if isinstance(self.arguments, str):
            return self.arguments
        return orjson.dumps(self.arguments).decode()

    def wire(self, arguments: str) -> dict[str, Any]:
        """The call as a message or first delta carries it: id (unless None), type, function."""
        wire: dict[str, Any] = {} if self.id is None else {"id": self.id}
        return {**wire, "type": "function", "function": {"name": self.name, "arguments": arguments}}


class Turn(BaseModel):
    """One scripted model answer and how it is put on the wire."""

    model_config = ConfigDict(extra="forbid")

    text: str = ""
    calls: list[Call] = []
    mode: Literal["stream", "whole", "raw"] = "stream"
    raw: Base64Bytes = b""
    """The exact response body for mode raw (base64 on the wire)."""
    finish_reason: str | None = None
    """None: "tool_calls" when there are calls, else "stop"."""
    cut: bool = False
    """Streamed: end right after the calls' deltas, with no finish_reason and no [DONE]."""
    status: int = 200
    """Answer with this HTTP status and an OpenAI error body instead (when not 200)."""
    refuse_stream: bool = False
    """Like llama.cpp's Python server: a streamed request with tools gets 200 and no body."""
    repeat_name: bool = False
    """Streamed: repeat each call's id and name on every delta (some servers do)."""
    pace_s: float = 0.0
    """Streamed: send the text a word per event, this many seconds apart (a slow answer)."""

    def finish(self) -> str:
        if self.finish_reason is not None:
            return self.finish_reason
        return "tool_calls" if self.calls else "stop"


class Script(BaseModel):
    """A registered script: the first turn, and the turn after the tools ran."""

    model_config = ConfigDict(extra="forbid")

    key: str
    turn: Turn
    after_tools: Turn | list[Turn] | None = None
    """The answer once tools ran; a list answers the n-th tool round with its n-th turn, and
    rounds past its end with the default text."""

    def after(self, messages: list[Any], trailing: list[str]) -> Turn:
        chosen = self.after_tools
        if isinstance(chosen, list):
            rounds = sum(1 for m in messages if isinstance(m, dict) and m.get("tool_calls"))
            chosen = chosen[max(rounds, 1) - 1] if max(rounds, 1) <= len(chosen) else None
        return chosen or Turn(text="done: " + "; ".join(trailing))


@dataclass
class Scripts:
    """Registered scripts and the request bodies received for each key."""

    by_key: dict[str, Script] = field(default_factory=dict)
    received: dict[str, list[Any]] = field(default_factory=dict)

    def answer(self, body: dict[str, Any]) -> Turn:
        """The turn that answers `body`; a body with a marker is recorded under its key, known
        or not."""
        key = script_key(body.get("messages"))
        if key is None:
            return Turn(text="no script")
        self.received.setdefault(key, []).append(body)
        script = self.by_key.get(key)
        if script is None:
            return Turn(text="no script")
        trailing = trailing_tool_contents(body["messages"])
        if not trailing:
            return script.turn
        return script.after(body["messages"], trailing)


def script_key(messages: object) -> str | None:
    """The key of the first `[[script:KEY]]` marker in a user message."""
    for message in messages if isinstance(messages, list) else ():
        if isinstance(message, dict) and message.get("role") == "user":
            found = MARKER.search(content_text(message.get("content")))
            if found:
                return found.group(1)
    return None


def trailing_tool_contents(messages: list[Any]) -> list[str]:
    """The contents of the tool messages that end the conversation (none if the last is not)."""
    contents: list[str] = []
    for message in reversed(messages):
        if not isinstance(message, dict) or message.get("role") != "tool":
            break
        contents.insert(0, content_text(message.get("content")))
    return contents


def completion(turn: Turn, model: str) -> dict[str, Any]:
    """The turn as one `chat.completion` object."""
    message: dict[str, Any] = {"role": "assistant", "content": turn.text or None}
    if turn.calls:
        message["tool_calls"] = [call.wire(call.arguments_text()) for call in turn.calls]
    choice = {"index": 0, "message": message, "logprobs": None, "finish_reason": turn.finish()}
    return {
        "id": "chatcmpl-" + secrets.token_hex(8),
        "object": "chat.completion",
        "created": int(time.time()),
        "model": model,
        "choices": [choice],
        "usage": _USAGE,
    }


def stream_events(turn: Turn, model: str) -> list[bytes]:
    """The turn as SSE events the way OpenAI streams them, cut short if the turn says so."""
    envelope = {
        "id": "chatcmpl-" + secrets.token_hex(8),
        "object": "chat.completion.chunk",
        "created": int(time.time()),
        "model": model,
    }

    def chunk(delta: dict[str, Any], finish: str | None = None) -> bytes:
        choice = {"index": 0, "delta": delta, "logprobs": None, "finish_reason": finish}
        return b"data: " + orjson.dumps({**envelope, "choices": [choice]}) + b"\n\n"

    events = [chunk({"role": "assistant", "content": ""})]
    if turn.text and turn.pace_s > 0:
        events += [chunk({"content": word}) for word in re.findall(r"\S+\s*", turn.text)]
    elif turn.text:
        events.append(chunk({"content": turn.text}))
    for index, call in enumerate(turn.calls):
        events.append(chunk({"tool_calls": [{"index": index, **call.wire("")}]}))
        text = call.arguments_text()
        for piece in (text[: len(text) // 2], text[len(text) // 2 :]):
            part: dict[str, Any] = {"index": index, "function": {"arguments": piece}}
            if turn.repeat_name:
                part = {"index": index, **call.wire(piece)}
            events.append(chunk({"tool_calls": [part]}))
    if turn.cut:
        return events
    events.append(chunk({}, turn.finish()))
    usage = {**envelope, "choices": [], "usage": _USAGE}
    events.append(b"data: " + orjson.dumps(usage) + b"\n\n")
    events.append(_DONE)
    return events


async def _one_by_one(events: list[bytes], pace_s: float = 0.0) -> AsyncIterator[bytes]:
    for event in events:
        yield event
        if pace_s > 0:
            await asyncio.sleep(pace_s)


def respond(turn: Turn, body: dict[str, Any]) -> Response:
    """Put `turn` on the wire in its mode; stream mode answers whole unless `stream` is true."""
    model = str(body.get("model") or "hostile-model")
    if turn.status != 200:
        error = {"message": f"scripted failure {turn.status}", "type": "x", "code": None}
        return _json({"error": error}, turn.status)
    if turn.refuse_stream and body.get("stream") is True and body.get("tools"):
        return Response(b"", media_type="text/event-stream")
    if turn.mode == "raw":
        return Response(turn.raw, media_type="text/event-stream")
    if turn.mode == "whole" or body.get("stream") is not True:
        return Response(orjson.dumps(completion(turn, model)), media_type="application/json")
    events = _one_by_one(stream_events(turn, model), turn.pace_s)
    return StreamingResponse(events, media_type="text/event-stream")


def _json(data: object, status_code: int = 200) -> Response:
    return Response(orjson.dumps(data), status_code=status_code, media_type="application/json")


def create_app() -> Starlette:
    """The hostile upstream's ASGI app, with its scripts held in memory."""
    scripts = Scripts()

    async def register(request: Request) -> Response:
        try:
            script = Script.model_validate_json(await request.body())
        except ValidationError as error:
            return _json({"error": {"message": str(error)}}, 400)
        scripts.by_key[script.key] = script
        return _json({"ok": True})

    async def chat_completions(request: Request) -> Response:
        try:
            body = orjson.loads(await request.body())
        except orjson.JSONDecodeError as error:
            return _json({"error": {"message": f"invalid JSON: {error}"}}, 400)
        if not isinstance(body, dict):
            return _json({"error": {"message": "the body must be a JSON object"}}, 400)
        return respond(scripts.answer(body), body)

    async def requests(request: Request) -> Response:
        return _json({"requests": scripts.received.get(request.path_params["key"], [])})

    async def health(request: Request) -> Response:
        return _json({"status": "ok"})

    routes = [
        Route("/scripts", register, methods=["POST"]),
        Route("/v1/chat/completions", chat_completions, methods=["POST"]),
        Route("/requests/{key}", requests, methods=["GET"]),
        Route("/health", health, methods=["GET"]),
    ]
    return Starlette(routes=routes)


def main(argv: Sequence[str] | None = None) -> None:
    """Serve the hostile upstream with uvicorn."""
    parser = argparse.ArgumentParser(prog="hostile-upstream", description=__doc__)
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, required=True)
    args = parser.parse_args(argv)
    uvicorn.run(create_app(), host=args.host, port=args.port, log_level="warning")


if __name__ == "__main__":
    main()
