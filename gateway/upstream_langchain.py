"""The LangChain adapter: any OpenAI-compatible endpoint through langchain-openai's `ChatOpenAI`.

Imported only when `GATEWAY_UPSTREAM_ADAPTER=langchain` selects it (`make_upstream`), so the
default gateway never loads langchain-openai. It passes the same contract tests as
`WireUpstream` at about 40 times the CPU per chunk (BENCHMARKS.md, P1).
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Sequence
from typing import Any

import httpx
import openai
import structlog
from langchain_core.messages import AIMessageChunk, convert_to_messages
from langchain_openai import ChatOpenAI

from core.errors import UpstreamError
from core.settings import Settings
from gateway.upstream import Quirks, TurnBuilder, TurnEnd, model_ids, upstream_status_error

log = structlog.stdlib.get_logger(__name__)


class LangChainUpstream:
    """Any OpenAI-compatible endpoint, through langchain-openai's `ChatOpenAI`."""

    def __init__(self, settings: Settings) -> None:
        self._settings = settings
        self._quirks = Quirks.of(settings)
        self._models: dict[str, ChatOpenAI] = {}
        # Its own connection pool (langchain-openai's default is shared by the process and
        # bound to the first event loop that used it).
        self._http = httpx.AsyncClient(timeout=settings.upstream_timeout_s)

    async def aclose(self) -> None:
        await self._http.aclose()

    async def list_models(self) -> list[str]:
        url = self._settings.upstream_base_url.rstrip("/") + "/models"
        key = self._settings.upstream_api_key.get_secret_value()
        try:
            response = await self._http.get(url, headers={"Authorization": f"Bearer {key}"})
            response.raise_for_status()
            return model_ids(response.json())
        except (httpx.HTTPError, ValueError) as error:
            log.warning("upstream_model_list_failed", error=repr(error))
            raise UpstreamError("the upstream model list is unavailable") from error

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
                http_async_client=self._http,
            )
        return self._models[model]

    async def stream_turn(
        self,
        model: str,
        messages: Sequence[dict[str, Any]],
        tools: Sequence[dict[str, Any]],
        params: dict[str, Any],
    ) -> AsyncIterator[list[str] | TurnEnd]:
        runnable: Any = self._chat_model(model)
        if tools:
            runnable = runnable.bind_tools(list(tools))
        params = self._quirks.params(tools, params)
        # The calls are put together here, not by adding chunks up: LangChain appends a name
        # that a server repeats on every delta (`getStringLengthgetStringLength`).
        turn = TurnBuilder()
        try:
            async for chunk in runnable.astream(convert_to_messages(list(messages)), **params):
                if not isinstance(chunk, AIMessageChunk):
                    continue
                if isinstance(chunk.content, str) and chunk.content:
                    yield [chunk.content]
                _take_chunk(turn, chunk)
        except openai.APIStatusError as error:
            raise upstream_status_error(error.status_code, error.message) from error
        except openai.APIError as error:
            raise UpstreamError(f"the upstream model failed: {type(error).__name__}") from error
        except ValueError as error:
            raise UpstreamError(f"upstream answered something unusable: {error}") from error
        yield turn.end()


def _take_chunk(turn: TurnBuilder, chunk: AIMessageChunk) -> None:
    """Feed one LangChain chunk's calls, finish reason and usage to a `TurnBuilder`."""
    parts = [
        {"index": c.get("index"), "id": c.get("id"),
         "function": {"name": c.get("name"), "arguments": c.get("args")}}
        for c in chunk.tool_call_chunks
    ]  # fmt: skip
    finish = chunk.response_metadata.get("finish_reason")
    turn.add({"choices": [{"delta": {"tool_calls": parts}, "finish_reason": finish}]})
    if chunk.usage_metadata:
        usage = chunk.usage_metadata
        turn.usage = {
            "prompt_tokens": usage["input_tokens"],
            "completion_tokens": usage["output_tokens"],
        }
