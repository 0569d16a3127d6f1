"""How the wire adapter reads what real upstreams send, quirks included (DESIGN.md, Upstream
model): the turn builder is fed the bytes of a stream, as they come off the network."""

from __future__ import annotations

from typing import Any

import orjson
import pytest

from core.errors import UpstreamError
from gateway.upstream import TurnBuilder, TurnEnd


def event(delta: dict[str, Any], finish: str | None = None, **extra: Any) -> bytes:
    choice = {"index": 0, "delta": delta, "finish_reason": finish}
    return b"data: " + orjson.dumps({"choices": [choice], **extra}) + b"\n\n"


def read(*blocks: bytes) -> tuple[list[str], TurnEnd]:
    turn = TurnBuilder()
    text: list[str] = []
    for block in blocks:
        text += turn.feed(block)
    turn.close()
    return text, turn.end()


def call_delta(index: int, **fields: Any) -> dict[str, Any]:
    return {"tool_calls": [{"index": index, **fields}]}


def test_text_split_anywhere_across_reads_comes_out_whole() -> None:
    stream = event({"content": "Hel"}) + event({"content": "lo"}) + b"data: [DONE]\n\n"
    for cut in range(1, len(stream)):
        text, end = read(stream[:cut], stream[cut:])
        assert "".join(text) == "Hello"
        assert end.finish_reason == "stop"


def test_ids_and_names_repeated_on_every_delta_make_one_call() -> None:
    fn = {"name": "lookupCapital"}
    text, end = read(
        event(call_delta(0, id="call_1", type="function", function={**fn, "arguments": ""})),
        event(call_delta(0, id="call_1", function={**fn, "arguments": '{"coun'})),
        event(call_delta(0, id="call_1", function={**fn, "arguments": 'try":"kenya"}'})),
        event({}, "tool_calls"),
    )
    assert text == []
    [call] = end.calls
    assert (call.id, call.name, call.arguments) == ("call_1", "lookupCapital", {"country": "kenya"})
    assert end.finish_reason == "tool_calls"


def test_no_usage_chunk_and_no_done_is_complete_with_a_finish_reason() -> None:
    text, end = read(event({"content": "hi"}), event({}, "stop"))
    assert text == ["hi"]
    assert (end.prompt_tokens, end.completion_tokens) == (0, 0)


def test_usage_is_taken_from_the_usage_chunk() -> None:
    usage = b'data: {"choices":[],"usage":{"prompt_tokens":7,"completion_tokens":2}}\n\n'
    _, end = read(event({"content": "hi"}, "stop"), usage, b"data: [DONE]\n\n")
    assert (end.prompt_tokens, end.completion_tokens) == (7, 2)


def test_a_stream_that_breaks_off_is_an_error_not_a_short_answer() -> None:
    with pytest.raises(UpstreamError, match="ended before the answer"):
        read(event({"content": "The answer is"}))
    with pytest.raises(UpstreamError, match="middle of an event"):
        read(event({"content": "The answer is"}), b'data: {"choices":[{"ind')


def test_crlf_comments_and_multi_line_data_are_server_sent_events_too() -> None:
    stream = (
        b": keep-alive\r\n\r\n"
        b'data: {"choices":[{"index":0,\r\ndata: "delta":{"content":"ok"}}]}\r\n\r\n'
        b"data: [DONE]\r\n\r\n"
    )
    text, _ = read(stream)
    assert text == ["ok"]


def test_legacy_function_call_beside_tool_calls_is_ignored() -> None:
    legacy = {"function_call": {"name": "lookupCapital", "arguments": "{}"}}
    delta = {**legacy, **call_delta(0, id="c1", function={"name": "lookupCapital"})}
    _, end = read(event(delta), event({}, "tool_calls"))
    assert [c.id for c in end.calls] == ["c1"]


def test_legacy_function_call_alone_is_refused_clearly() -> None:
    legacy = {"function_call": {"name": "lookupCapital", "arguments": "{}"}}
    with pytest.raises(UpstreamError, match="legacy function_call"):
        read(event(legacy), event({}, "function_call"))


def test_a_whole_completion_where_a_stream_was_asked_for() -> None:
    call = {"id": "c9", "type": "function", "function": {"name": "f", "arguments": '{"a":1}'}}
    completion = {
        "choices": [
            {"message": {"content": None, "tool_calls": [call]}, "finish_reason": "tool_calls"}
        ],
        "usage": {"prompt_tokens": 3, "completion_tokens": 4},
    }
    turn = TurnBuilder()
    assert turn.add_completion(completion) is None
    end = turn.end()
    assert [(c.id, c.name, c.arguments) for c in end.calls] == [("c9", "f", {"a": 1})]
    assert (end.finish_reason, end.prompt_tokens, end.completion_tokens) == ("tool_calls", 3, 4)
    answer = {"choices": [{"message": {"content": "plain"}, "finish_reason": "stop"}]}
    assert TurnBuilder().add_completion(answer) == "plain"


def test_arguments_that_are_not_a_json_object_make_an_invalid_call() -> None:
    delta = call_delta(0, id="c1", function={"name": "f", "arguments": "{not json"})
    _, end = read(event(delta), event({}, "tool_calls"))
    [call] = end.calls
    assert call.arguments is None and call.raw_arguments == "{not json"


def test_an_error_object_in_the_stream_is_an_upstream_error() -> None:
    with pytest.raises(UpstreamError, match="overloaded"):
        read(b'data: {"error":{"message":"model overloaded","type":"server_error"}}\n\n')
