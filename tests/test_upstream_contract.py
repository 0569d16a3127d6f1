"""The upstream adapters' contract, held by both: the same turns from a real offline model.

Each test runs once per adapter (`wire`, the default, and `langchain`) against an
offline-model process over HTTP, and compares what the adapter yields with what the
offline model's rules say it answered.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

import orjson
import pytest

from core.errors import UpstreamError
from core.settings import Settings
from gateway.upstream import RequestedCall, TurnEnd, Upstream, make_upstream
from offline_model.script import decide
from tests.processes import free_port

ADAPTERS = ["wire", "langchain"]
TOOLS = [
    {
        "type": "function",
        "function": {
            "name": name,
            "description": f"{name} for tests",
            "parameters": {
                "type": "object",
                "properties": {field: {"type": "string"}},
                "required": [field],
            },
        },
    }
    for name, field in (("getStringLength", "text"), ("lookupCapital", "country"))
]


@pytest.fixture(params=ADAPTERS)
async def upstream(request: pytest.FixtureRequest, offline_model: str) -> AsyncIterator[Upstream]:
    settings = Settings(upstream_base_url=offline_model, upstream_adapter=request.param)
    adapter = make_upstream(settings)
    yield adapter
    await adapter.aclose()


async def turn_of(
    upstream: Upstream,
    messages: list[dict[str, Any]],
    tools: list[dict[str, Any]] | None = None,
    params: dict[str, Any] | None = None,
) -> tuple[list[str], TurnEnd]:
    pieces: list[str] = []
    ends: list[TurnEnd] = []
    async for item in upstream.stream_turn("offline-model", messages, tools or [], params or {}):
        if isinstance(item, TurnEnd):
            ends.append(item)
        else:
            assert not ends, "text after the end of the turn"
            assert item, "a read with no text yields nothing"
            pieces += item
    assert len(ends) == 1, "a turn ends with exactly one TurnEnd"
    return pieces, ends[0]


async def test_text_streams_as_the_models_pieces_then_usage(upstream: Upstream) -> None:
    messages = [{"role": "user", "content": "say something long enough to stream"}]
    pieces, end = await turn_of(upstream, messages)
    expected = decide(messages, [], 12)
    assert "".join(pieces) == expected.text
    assert len(pieces) == 12  # one piece per word, as the model sent them
    assert end.calls == []
    assert end.finish_reason == "stop"
    assert end.prompt_tokens > 0 and end.completion_tokens == len(pieces)


async def test_tool_calls_are_reassembled_with_ids_names_and_arguments(
    upstream: Upstream,
) -> None:
    messages = [
        {"role": "user", "content": 'use getStringLength "hello world" and lookupCapital "kenya"'}
    ]
    pieces, end = await turn_of(upstream, messages, TOOLS)
    expected = decide(messages, TOOLS, 12).tool_calls
    assert pieces == []
    assert end.finish_reason == "tool_calls"
    assert [(c.id, c.name, c.arguments) for c in end.calls] == [
        (c.id, c.name, c.arguments) for c in expected
    ]
    for call in end.calls:
        assert isinstance(call, RequestedCall)
        assert orjson.loads(call.raw_arguments) == call.arguments


async def test_a_conversation_with_tool_results_gets_the_models_answer(
    upstream: Upstream,
) -> None:
    call = {
        "id": "call_1",
        "type": "function",
        "function": {"name": "getStringLength", "arguments": '{"text":"hello"}'},
    }
    messages: list[dict[str, Any]] = [
        {"role": "user", "content": 'getStringLength "hello"'},
        {"role": "assistant", "content": None, "tool_calls": [call]},
        {"role": "tool", "tool_call_id": "call_1", "content": "5"},
    ]
    pieces, end = await turn_of(upstream, messages, TOOLS)
    assert "".join(pieces) == decide(messages, TOOLS, 12).text
    assert "".join(pieces) == "getStringLength returned 5."
    assert end.calls == [] and end.finish_reason == "stop"


async def test_sampling_parameters_reach_the_model_without_breaking_the_turn(
    upstream: Upstream,
) -> None:
    messages = [{"role": "user", "content": "parameters"}]
    pieces, end = await turn_of(upstream, messages, params={"temperature": 0.2, "max_tokens": 50})
    assert "".join(pieces) == decide(messages, [], 12).text
    assert end.finish_reason == "stop"


async def test_an_upstream_4xx_is_an_upstream_error_naming_the_problem(
    upstream: Upstream,
) -> None:
    with pytest.raises(UpstreamError, match="messages"):
        await turn_of(upstream, [])


async def test_an_unreachable_upstream_is_an_upstream_error() -> None:
    for adapter in ADAPTERS:
        closed = f"http://127.0.0.1:{free_port()}/v1"
        settings = {"upstream_base_url": closed, "upstream_adapter": adapter}
        upstream = make_upstream(Settings.model_validate(settings))
        with pytest.raises(UpstreamError) as raised:
            await turn_of(upstream, [{"role": "user", "content": "hi"}])
        assert raised.value.status_code == 502
        await upstream.aclose()


def test_unknown_adapter_is_refused_at_start() -> None:
    with pytest.raises(ValueError, match="upstream_adapter"):
        Settings(upstream_adapter="grpc")  # type: ignore[arg-type]
