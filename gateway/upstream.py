"""The upstream model, behind one small interface, with two adapters.

A turn is streamed as text pieces (a list per network read) followed by one
`TurnEnd` that carries the complete tool calls (arguments reassembled from their deltas), the finish
reason and the usage.

`WireUpstream` (the default) speaks the OpenAI wire format itself: aiohttp for the
connection, orjson for each `data:` payload, and no object built per chunk beyond
the decoded dict, so relaying a token costs a few microseconds. `LangChainUpstream`
(gateway/upstream_langchain.py) goes through langchain-openai's `ChatOpenAI` (about
0.6 ms per chunk here, see BENCHMARKS.md) and is kept for endpoints that need its
quirks handled; choose it with `GATEWAY_UPSTREAM_ADAPTER=langchain`, the only case in
which langchain-openai is imported. Both pass the same contract tests.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal, Protocol

import aiohttp
import orjson
import structlog

from core.errors import UpstreamError, UpstreamRateLimited, UpstreamRejected
from core.settings import Settings

log = structlog.stdlib.get_logger(__name__)


@dataclass(frozen=True, slots=True)
class RequestedCall:
    """A complete tool call from the model; `arguments` is None when its JSON was invalid."""

    id: str
    name: str
    arguments: dict[str, Any] | None
    raw_arguments: str


@dataclass(slots=True)
class TurnEnd:
    """The end of one model turn."""

    calls: list[RequestedCall] = field(default_factory=list)
    finish_reason: str = "stop"
    prompt_tokens: int = 0
    completion_tokens: int = 0


class Upstream(Protocol):
    """Streams one model turn."""

    def stream_turn(
        self,
        model: str,
        messages: Sequence[dict[str, Any]],
        tools: Sequence[dict[str, Any]],
        params: dict[str, Any],
    ) -> AsyncIterator[list[str] | TurnEnd]:
        """The turn's text pieces, a list per network read, then one `TurnEnd`."""
        ...

    async def list_models(self) -> list[str]:
        """The ids of the models the upstream serves (`GET /models`)."""
        ...

    async def aclose(self) -> None: ...


@dataclass(slots=True)
class Quirks:
    """What one upstream needs beyond the OpenAI wire format (settings), and what was learned
    of it while serving (`whole_with_tools`)."""

    tool_choice: Literal["auto", "omit"]
    """`auto`: say `tool_choice: "auto"` whenever tools are offered (some servers take a
    missing one as `none`)."""
    assistant_content: Literal["null", "empty"]
    """`empty`: an assistant message with tool calls and no text says `content: ""` (some
    servers refuse `null` and a missing `content`)."""
    detect_stream_refusal: bool
    """Whether an empty answer or a 400/422/501 to a streamed request with tools means the
    server does not stream with tools (then it is asked for whole answers from then on)."""
    whole_with_tools: bool
    """Ask for whole (non-streamed) answers whenever tools are offered."""

    @classmethod
    def of(cls, settings: Settings) -> Quirks:
        mode = settings.upstream_stream_tools
        return cls(
            settings.upstream_tool_choice,
            settings.upstream_assistant_content,
            detect_stream_refusal=mode == "auto",
            whole_with_tools=mode == "never",
        )

    def payload(
        self,
        model: str,
        messages: Sequence[dict[str, Any]],
        tools: Sequence[dict[str, Any]],
        params: dict[str, Any],
    ) -> dict[str, Any]:
        """The streamed request for one turn."""
        payload = {**self.params(tools, params), "model": model, "stream": True}
        payload["messages"] = messages
        if self.assistant_content == "empty":
            payload["messages"] = [_with_content(message) for message in messages]
        payload["stream_options"] = {"include_usage": True}
        if tools:
            payload["tools"] = tools
        return payload

    def params(self, tools: Sequence[dict[str, Any]], params: dict[str, Any]) -> dict[str, Any]:
        """The request's parameters for a turn that offers `tools` (or none)."""
        params = dict(params)
        if tools and self.tool_choice == "auto":
            params.setdefault("tool_choice", "auto")
        elif not tools:  # servers refuse these without tools (once the rounds are used up)
            params.pop("tool_choice", None)
            params.pop("parallel_tool_calls", None)
        return params


def _with_content(message: dict[str, Any]) -> dict[str, Any]:
    if message.get("role") == "assistant" and message.get("content") is None:
        return {**message, "content": ""}
    return message


class _RefusedStream(Exception):
    """The upstream will not stream this request (with tools)."""


def upstream_status_error(status: int, detail: str) -> UpstreamError:
    """An upstream's HTTP error as the gateway reports it: the request's fault (4xx), too
    many requests (429), or the upstream's (502)."""
    if status == 429:
        return UpstreamRateLimited(f"the upstream model is rate limited: {detail}")
    if 400 <= status < 500:
        return UpstreamRejected(f"the upstream model refused the request (HTTP {status}): {detail}")
    return UpstreamError(f"the upstream model failed (HTTP {status}): {detail}")


def _kind(error: BaseException) -> str:
    """What went wrong, without the address (a message never names an internal host)."""
    if isinstance(error, TimeoutError | aiohttp.ServerTimeoutError):
        return "timed out"
    if isinstance(error, aiohttp.ClientConnectorError):
        return "connection refused or unreachable"
    if isinstance(error, aiohttp.ServerDisconnectedError):
        return "it closed the connection"
    return type(error).__name__


def make_upstream(settings: Settings) -> Upstream:
    """The adapter `GATEWAY_UPSTREAM_ADAPTER` names."""
    if settings.upstream_adapter == "langchain":
        # Imported only when chosen: the default gateway never loads langchain-openai.
        from gateway.upstream_langchain import LangChainUpstream

        return LangChainUpstream(settings)
    return WireUpstream(settings)


class WireUpstream:
    """Any OpenAI-compatible endpoint, spoken to directly: one pooled aiohttp session, orjson.

    aiohttp rather than httpx here: on this path httpx costs about twice the CPU per
    request and per read (its pool checks every idle connection with a syscall on each
    request, and each read goes through several generator and cancel-scope layers; see
    BENCHMARKS.md, P1 and P2).
    """

    def __init__(self, settings: Settings) -> None:
        self._url = settings.upstream_base_url.rstrip("/") + "/chat/completions"
        self._models_url = settings.upstream_base_url.rstrip("/") + "/models"
        self._headers = {
            "Authorization": f"Bearer {settings.upstream_api_key.get_secret_value()}",
            "Content-Type": "application/json",
            "Accept": "text/event-stream",
        }
        # The whole answer may take long; what is bounded is connecting and each silence.
        self._timeout = aiohttp.ClientTimeout(
            total=None, sock_connect=10.0, sock_read=settings.upstream_timeout_s
        )
        self._session: aiohttp.ClientSession | None = None
        self._max_bytes = settings.max_upstream_turn_bytes
        self._quirks = Quirks.of(settings)

    def _client(self) -> aiohttp.ClientSession:
        if self._session is None:  # created on first use, inside the serving event loop
            self._session = aiohttp.ClientSession(
                # Idle connections are dropped before common servers' keep-alive ends (5 s).
                connector=aiohttp.TCPConnector(limit=0, keepalive_timeout=4),
                headers=self._headers,
                timeout=self._timeout,
            )
        return self._session

    async def aclose(self) -> None:
        if self._session is not None:
            await self._session.close()

    async def list_models(self) -> list[str]:
        try:
            async with self._client().get(self._models_url) as response:
                if response.status != 200:
                    raise UpstreamError(f"upstream model list failed: HTTP {response.status}")
                return model_ids(orjson.loads(await response.content.read(1024 * 1024)))
        except (aiohttp.ClientError, TimeoutError, orjson.JSONDecodeError) as error:
            log.warning("upstream_model_list_failed", error=repr(error))
            raise UpstreamError("the upstream model list is unavailable") from error

    async def stream_turn(
        self,
        model: str,
        messages: Sequence[dict[str, Any]],
        tools: Sequence[dict[str, Any]],
        params: dict[str, Any],
    ) -> AsyncIterator[list[str] | TurnEnd]:
        payload = self._quirks.payload(model, messages, tools, params)
        stream = not (tools and self._quirks.whole_with_tools)
        try:
            async for part in self._turn(payload, stream):
                yield part
        except _RefusedStream as refused:
            # A server that will not stream once tools are offered: ask it for the whole
            # answer, now and from now on (this process remembers).
            log.warning("upstream_refused_streaming_tools", reason=str(refused))
            self._quirks.whole_with_tools = True
            async for part in self._turn(payload, stream=False):
                yield part

    async def _turn(
        self, payload: dict[str, Any], stream: bool
    ) -> AsyncIterator[list[str] | TurnEnd]:
        if not stream:
            payload = {**payload, "stream": False}
            payload.pop("stream_options", None)
        turn = TurnBuilder(self._max_bytes)
        try:
            async with await self._post(orjson.dumps(payload)) as response:
                if response.status != 200:
                    body = await response.content.read(4096)
                    refused_stream = (
                        stream and "tools" in payload and response.status in (400, 422, 501)
                    )
                    if refused_stream and self._quirks.detect_stream_refusal:
                        raise _RefusedStream(f"HTTP {response.status}")
                    raise upstream_status_error(response.status, _error_text(body))
                if response.content_type == "application/json":
                    body = b"".join([block async for block in _bounded(response, self._max_bytes)])
                    text = turn.add_completion(orjson.loads(body))
                    if text:
                        yield [text]
                else:
                    # The hot loop: one call per network read, its text yielded at once.
                    async for block in response.content.iter_any():
                        pieces = turn.feed(block)
                        if pieces:
                            yield pieces
                    if turn.empty and "tools" in payload and self._quirks.detect_stream_refusal:
                        raise _RefusedStream("an empty answer")  # llama.cpp's Python server
                    turn.close()
        except (aiohttp.ClientError, TimeoutError) as error:
            log.warning("upstream_request_failed", error=repr(error))  # with the address
            raise UpstreamError(
                f"the upstream model could not be reached ({_kind(error)})"
            ) from error
        except (orjson.JSONDecodeError, TypeError, KeyError, IndexError) as error:
            raise UpstreamError(f"upstream answered something unusable: {error!r}") from error
        yield turn.end()

    async def _post(self, body: bytes) -> aiohttp.ClientResponse:
        """POST the request. A failed connect, or a pooled connection the server had already
        closed (no response began), is tried once more on a fresh connection: a chat
        completion has no side effects to repeat."""
        try:
            return await self._client().post(self._url, data=body)
        # ClientOSError covers a failed connect and a reset (llama.cpp's server closes the
        # connection after an empty answer, though it said keep-alive).
        except (aiohttp.ClientOSError, aiohttp.ServerDisconnectedError) as error:
            log.info("upstream_connection_retried", error=repr(error))  # on a fresh one
            return await self._client().post(self._url, data=body)


async def _bounded(response: aiohttp.ClientResponse, limit: int) -> AsyncIterator[bytes]:
    """The response body's blocks; `UpstreamError` once they exceed `limit` bytes."""
    size = 0
    async for block in response.content.iter_any():
        size += len(block)
        if size > limit:
            raise UpstreamError(f"upstream answer is larger than {limit} bytes")
        yield block


def _payload(event: bytes) -> bytes | None:
    """The `data:` payload of one server-sent event (None for a comment or no data); a
    payload split over several `data:` lines is joined with newlines."""
    if event.startswith(b"data: ") and b"\n" not in event:
        return event[6:]  # the usual one-line event
    lines = [line for line in event.split(b"\n") if line.startswith(b"data:")]
    if not lines:
        return None
    return b"\n".join(line[6:] if line[5:6] == b" " else line[5:] for line in lines)


def _error_text(body: bytes) -> str:
    """An upstream error body's message, or the start of the body."""
    try:
        message = orjson.loads(body)["error"]["message"]
    except (orjson.JSONDecodeError, TypeError, KeyError):
        return body[:300].decode(errors="replace")
    return str(message)


class TurnBuilder:
    """Accumulates one streamed turn: tool-call deltas by index, finish reason, usage.

    Upstreams differ, and each difference seen in the wild is handled here: the call id
    (and name) repeated on every delta, no usage chunk, a stream without `[DONE]` (a
    finish_reason is enough), the legacy `function_call` beside `tool_calls` (ignored)
    or instead of them (refused with a clear error), and a whole `chat.completion`
    where a stream was asked for (`add_completion`).
    """

    __slots__ = (
        "buffer",
        "calls",
        "events",
        "finish_reason",
        "finished",
        "left",
        "legacy_call",
        "usage",
    )

    def __init__(self, max_bytes: int = 8 * 1024 * 1024) -> None:
        self.left = max_bytes
        """How many more bytes the turn may take: a hostile upstream cannot fill memory."""
        self.buffer = b""
        self.events = 0
        """How many `data:` events arrived."""
        self.calls: dict[int, list[str]] = {}
        """index -> [id, name, argument text so far]"""
        self.finish_reason = "stop"
        self.finished = False
        """A finish_reason or `[DONE]` arrived: the answer is complete."""
        self.legacy_call = ""
        self.usage: dict[str, Any] | None = None

    def feed(self, block: bytes) -> list[str]:
        """Take bytes of the SSE stream; the text of the events they complete."""
        self.left -= len(block)
        if self.left < 0:
            raise UpstreamError("upstream answer is larger than the limit for one turn")
        buffer = self.buffer + block
        if b"\r" in buffer:
            buffer = buffer.replace(b"\r\n", b"\n")
        *events, self.buffer = buffer.split(b"\n\n")
        pieces = []
        for event in events:
            data = _payload(event)
            if data is None:
                continue
            self.events += 1
            if data == b"[DONE]":
                self.finished = True
                continue
            text = self.add(orjson.loads(data))
            if text:
                pieces.append(text)
        return pieces

    @property
    def empty(self) -> bool:
        """Nothing arrived at all (an empty 200)."""
        return self.events == 0 and not self.buffer.strip()

    def close(self) -> None:
        """The stream ended: refuse a cut-off one."""
        if self.buffer.strip():
            raise UpstreamError("upstream stream ended in the middle of an event")
        if not self.finished:
            raise UpstreamError(
                "upstream stream ended before the answer did (no finish_reason, no [DONE])"
            )

    def add(self, chunk: dict[str, Any]) -> str | None:
        """Take one chunk; its text, if any."""
        if "error" in chunk and "choices" not in chunk:
            raise UpstreamError(f"upstream model failed: {_error_text(orjson.dumps(chunk))}")
        if chunk.get("usage"):
            self.usage = chunk["usage"]
        choices = chunk.get("choices")
        if not choices:
            return None
        choice = choices[0]
        if choice.get("finish_reason"):
            self.finish_reason = choice["finish_reason"]
            self.finished = True
        delta = choice.get("delta") or {}
        for part in delta.get("tool_calls") or ():
            index = part.get("index")
            if index is None:  # a new call when it brings an id, else the one under way
                index = max(self.calls, default=-1) + (1 if part.get("id") else 0)
                index = max(index, 0)
            if not isinstance(index, int) or isinstance(index, bool):
                raise UpstreamError("upstream sent a tool call whose index is not an integer")
            call = self.calls.setdefault(index, ["", "", ""])
            function = part.get("function") or {}
            call_id, name, arguments = _strings(part.get("id"), *_parts(function))
            call[0] = call_id or call[0]
            if name != call[1]:  # a name repeated on every delta is not appended again
                call[1] += name
            call[2] += arguments
        if delta.get("function_call"):
            self.legacy_call = self.legacy_call or str(delta["function_call"].get("name") or "?")
        content = delta.get("content")
        return content if isinstance(content, str) else None

    def add_completion(self, completion: dict[str, Any]) -> str | None:
        """Take a whole (non-streamed) `chat.completion`; its text, if any."""
        if "error" in completion and "choices" not in completion:
            raise UpstreamError(f"upstream model failed: {_error_text(orjson.dumps(completion))}")
        self.usage = completion.get("usage") or None
        choice = completion["choices"][0]
        self.finish_reason = choice.get("finish_reason") or "stop"
        self.finished = True
        message = choice.get("message") or {}
        for index, call in enumerate(message.get("tool_calls") or ()):
            function = call.get("function") or {}
            self.calls[index] = list(_strings(call.get("id"), *_parts(function)))
        if message.get("function_call"):
            self.legacy_call = str(message["function_call"].get("name") or "?")
        content = message.get("content")
        return content if isinstance(content, str) and content else None

    def end(self) -> TurnEnd:
        if self.legacy_call and not self.calls:
            raise UpstreamError(
                f"upstream asked for {self.legacy_call!r} with the legacy function_call, "
                "not tool_calls; use a model or server that supports tools"
            )
        usage = self.usage or {}
        return TurnEnd(
            calls=[_requested(*self.calls[index]) for index in sorted(self.calls)],
            finish_reason=self.finish_reason,
            prompt_tokens=int(usage.get("prompt_tokens") or 0),
            completion_tokens=int(usage.get("completion_tokens") or 0),
        )


def _parts(function: Any) -> tuple[Any, Any]:
    if not isinstance(function, dict):
        raise UpstreamError("upstream sent a tool call whose function is not an object")
    return function.get("name"), function.get("arguments")


def _strings(*values: Any) -> tuple[str, ...]:
    """A tool call's id, name and arguments text: strings (absent ones empty), or the
    upstream answered something unusable."""
    if any(value is not None and not isinstance(value, str) for value in values):
        raise UpstreamError("upstream sent a tool call whose id, name or arguments is not text")
    return tuple(value or "" for value in values)


def _requested(call_id: str, name: str, raw: str) -> RequestedCall:
    """A complete call; arguments that are not a JSON object make it invalid (None)."""
    try:
        arguments = orjson.loads(raw) if raw.strip() else {}
    except orjson.JSONDecodeError:
        arguments = None
    if not isinstance(arguments, dict):
        return RequestedCall(call_id, name, None, raw)
    return RequestedCall(call_id, name, arguments, raw)


def model_ids(listing: Any) -> list[str]:
    """The ids in an OpenAI `GET /models` answer (`{"data": [{"id": ...}]}`)."""
    data = listing.get("data") if isinstance(listing, dict) else None
    if not isinstance(data, list):
        raise UpstreamError("the upstream model list is not an OpenAI list")
    return [str(m["id"]) for m in data if isinstance(m, dict) and isinstance(m.get("id"), str)]
