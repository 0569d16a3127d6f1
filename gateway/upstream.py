"""The upstream model, behind one small interface; langchain-openai is the reference adapter.

A turn is streamed as text deltas followed by one `TurnEnd` that carries the
complete tool calls (arguments reassembled from their deltas), the finish
reason and the usage.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol

import openai
import orjson
from langchain_core.messages import AIMessageChunk, BaseMessageChunk, convert_to_messages
from langchain_openai import ChatOpenAI

from core.errors import UpstreamError
from core.settings import Settings


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
    ) -> AsyncIterator[str | TurnEnd]: ...


class LangChainUpstream:
    """Any OpenAI-compatible endpoint, through langchain-openai's `ChatOpenAI`."""

    def __init__(self, settings: Settings) -> None:
        self._settings = settings
        self._models: dict[str, ChatOpenAI] = {}

    def _chat_model(self, model: str) -> ChatOpenAI:
        # One client per model name, so connections are pooled across requests.
        if model not in self._models:
            self._models[model] = ChatOpenAI(
                model=model,
                base_url=self._settings.upstream_base_url,
                api_key=self._settings.upstream_api_key,
                timeout=self._settings.upstream_timeout_s,
                max_retries=1,
                streaming=True,
                stream_usage=True,
            )
        return self._models[model]

    async def stream_turn(
        self,
        model: str,
        messages: Sequence[dict[str, Any]],
        tools: Sequence[dict[str, Any]],
        params: dict[str, Any],
    ) -> AsyncIterator[str | TurnEnd]:
        runnable: Any = self._chat_model(model)
        if tools:
            runnable = runnable.bind_tools(list(tools))
        merged: BaseMessageChunk | None = None
        try:
            async for chunk in runnable.astream(convert_to_messages(list(messages)), **params):
                if isinstance(chunk.content, str) and chunk.content:
                    yield chunk.content
                merged = chunk if merged is None else merged + chunk
        except openai.APIError as error:
            raise UpstreamError(f"upstream model failed: {error}") from error
        except ValueError as error:
            raise UpstreamError(f"upstream answered something unusable: {error}") from error
        yield _turn_end(merged)


def _turn_end(merged: BaseMessageChunk | None) -> TurnEnd:
    if not isinstance(merged, AIMessageChunk):
        raise UpstreamError("upstream stream ended without a message")
    calls = [
        RequestedCall(c["id"] or "", c["name"], c["args"], orjson.dumps(c["args"]).decode())
        for c in merged.tool_calls
    ]
    calls += [
        RequestedCall(c["id"] or "", c["name"] or "", None, c["args"] or "")
        for c in merged.invalid_tool_calls
    ]
    usage = merged.usage_metadata or {"input_tokens": 0, "output_tokens": 0}
    return TurnEnd(
        calls=calls,
        finish_reason=merged.response_metadata.get("finish_reason") or "stop",
        prompt_tokens=usage["input_tokens"],
        completion_tokens=usage["output_tokens"],
    )
