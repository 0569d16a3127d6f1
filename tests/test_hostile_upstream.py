"""The hostile upstream answers exactly as scripted: through the official SDK, on the raw wire,
and as the model behind a real gateway stack."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import httpx
import openai
import pytest

from tests.clients import consume, sse_data, stream_chat, user
from tests.conftest import StackFactory
from tests.hostile import HostileUpstream, call, raw_turn, turn

DUPLICATES = turn(
    call("lookupCapital", {"country": "France"}, id="call_dup"),
    call("getStringLength", '{"text": "not closed', id="call_dup"),
    text="Sure.",
)
EXPECTED = [
    ("call_dup", "lookupCapital", '{"country":"France"}'),
    ("call_dup", "getStringLength", '{"text": "not closed'),
]


def sdk(hostile: HostileUpstream) -> openai.OpenAI:
    return openai.OpenAI(base_url=hostile.url, api_key="unused", max_retries=0, timeout=10)


def post(hostile: HostileUpstream, messages: Sequence[Any], **body: Any) -> httpx.Response:
    request = {"model": "m", "messages": messages, **body}
    return httpx.post(f"{hostile.url}/chat/completions", json=request, timeout=10)


def test_sdk_streams_two_calls_sharing_one_id_as_scripted(
    hostile_upstream: HostileUpstream,
) -> None:
    marker = hostile_upstream.script(DUPLICATES)
    stream = sdk(hostile_upstream).chat.completions.create(
        model="m", messages=user(f"hi {marker}"), stream=True
    )
    seen = consume(stream)
    calls: dict[int, list[str]] = {}
    for delta in seen.tool_calls:
        entry = calls.setdefault(delta.index, ["", "", ""])
        entry[0] += delta.id or ""
        if delta.function is not None:
            entry[1] += delta.function.name or ""
            entry[2] += delta.function.arguments or ""
    assert [tuple(calls[index]) for index in sorted(calls)] == EXPECTED
    # One opening delta and two argument halves per call.
    assert [d.index for d in seen.tool_calls] == [0, 0, 0, 1, 1, 1]
    assert seen.text == "Sure." and seen.finish_reason == "tool_calls"
    assert seen.usage is not None


@pytest.mark.parametrize("mode", ["whole", "stream"])
def test_sdk_reads_the_same_calls_whole(hostile_upstream: HostileUpstream, mode: str) -> None:
    marker = hostile_upstream.script({**DUPLICATES, "mode": mode})
    completion = sdk(hostile_upstream).chat.completions.create(
        model="m", messages=user(f"hi {marker}")
    )
    [choice] = completion.choices
    assert choice.finish_reason == "tool_calls" and choice.message.content == "Sure."
    got = [
        (c.id, c.function.name, c.function.arguments)
        for c in choice.message.tool_calls or []
        if isinstance(c, openai.types.chat.ChatCompletionMessageFunctionToolCall)
    ]
    assert got == EXPECTED


def test_whole_mode_answers_json_even_to_a_stream_request(
    hostile_upstream: HostileUpstream,
) -> None:
    marker = hostile_upstream.script(turn(text="whole", mode="whole", finish_reason="length"))
    response = post(hostile_upstream, user(marker), stream=True)
    assert response.headers["content-type"] == "application/json"
    assert response.json()["object"] == "chat.completion"
    assert response.json()["choices"][0]["finish_reason"] == "length"


def test_a_call_scripted_without_an_id_has_no_id_field(hostile_upstream: HostileUpstream) -> None:
    marker = hostile_upstream.script(turn(call("explode", {"reason": "x"}, id=None)))
    response = post(hostile_upstream, user(marker), stream=True)
    opening = sse_data(response.text.splitlines())[1]["choices"][0]["delta"]["tool_calls"][0]
    assert opening == {
        "index": 0,
        "type": "function",
        "function": {"name": "explode", "arguments": ""},
    }


def test_a_cut_stream_stops_after_the_calls_without_finish_or_done(
    hostile_upstream: HostileUpstream,
) -> None:
    marker = hostile_upstream.script(turn(call("explode", {"reason": "cut"}), cut=True))
    response = post(hostile_upstream, user(marker), stream=True)
    events = sse_data(response.text.splitlines())
    assert "[DONE]" not in events
    assert [e["choices"][0]["finish_reason"] for e in events] == [None] * 4
    deltas = [e["choices"][0]["delta"]["tool_calls"][0] for e in events[1:]]
    assert "".join(d["function"]["arguments"] for d in deltas) == '{"reason":"cut"}'


def test_raw_mode_sends_the_exact_bytes(hostile_upstream: HostileUpstream) -> None:
    body = b'data: {"choices":[{"index":0,"delta":{"content":"\xff\xfe"}}]}\n\ndata: [DO'
    marker = hostile_upstream.script(raw_turn(body))
    response = post(hostile_upstream, user(marker), stream=True)
    assert response.content == body
    assert response.headers["content-type"].startswith("text/event-stream")


def test_after_tools_the_model_is_answered_from_the_tool_messages(
    hostile_upstream: HostileUpstream,
) -> None:
    marker = hostile_upstream.script(turn(text="first"))
    parts = [{"type": "text", "text": f"look {marker}"}]
    asked = [{"role": "user", "content": parts}, {"role": "assistant", "content": "ok"}]
    told = [*asked, {"role": "tool", "content": "A"}, {"role": "tool", "content": "B"}]
    texts = [
        post(hostile_upstream, messages).json()["choices"][0]["message"]["content"]
        for messages in (asked, told, user("no marker here"))
    ]
    assert texts == ["first", "done: A; B", "no script"]
    assert [r["messages"] for r in hostile_upstream.requests(marker)] == [asked, told]

    replaced = hostile_upstream.script(turn(text="first"), after_tools=turn(text="scripted"))
    told[0] = {"role": "user", "content": replaced}
    assert post(hostile_upstream, told).json()["choices"][0]["message"]["content"] == "scripted"


def test_the_gateway_runs_a_scripted_call_and_the_model_hears_the_result(
    hostile_upstream: HostileUpstream, make_stack: StackFactory
) -> None:
    scripted = call("lookupCapital", {"country": "France"}, id="call_fr")
    marker = hostile_upstream.script(turn(scripted))
    replica = make_stack(upstream=hostile_upstream.url).replicas[0]

    seen = consume(stream_chat(replica.url, f"capital of France? {marker}"))

    assert [e["type"] for e in seen.tool_events] == ["executing", "result"]
    assert seen.events_of("result")[0]["content"] == "Paris"
    assert seen.text == "done: Paris"
    first, after_tools = hostile_upstream.requests(marker)
    assert first["stream"] is True and first["messages"][-1]["role"] == "user"
    told = after_tools["messages"][-1]
    assert told["role"] == "tool" and told["content"] == "Paris"
    assert told["tool_call_id"] == after_tools["messages"][-2]["tool_calls"][0]["id"]
