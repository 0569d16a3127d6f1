"""The offline model: its reply rules, and its wire format as seen by real clients."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import openai
import orjson
import pytest
from langchain_core.messages import AIMessageChunk
from langchain_openai import ChatOpenAI
from pydantic import SecretStr

from offline_model.script import (
    REPLY_PREFIX,
    Reply,
    argument_pieces,
    conversation_digest,
    decide,
    default_reply,
    text_pieces,
    tool_call_id,
)

ROOT = Path(__file__).resolve().parent.parent

STRING_LENGTH = {
    "type": "function",
    "function": {
        "name": "getStringLength",
        "description": "Length of a string.",
        "parameters": {
            "type": "object",
            "properties": {"text": {"type": "string"}},
            "required": ["text"],
        },
    },
}
ADD = {
    "type": "function",
    "function": {
        "name": "add",
        "description": "Add two numbers.",
        "parameters": {
            "type": "object",
            "properties": {
                "a": {"type": "integer"},
                "b": {"type": "number"},
                "exact": {"type": "boolean"},
                "note": {"anyOf": [{"type": "string"}, {"type": "null"}]},
            },
        },
    },
}
TOOLS: list[dict[str, Any]] = [STRING_LENGTH, ADD]
TWO_CALLS_PROMPT = "use getStringLength on 'ab' and getStringLength on \"abc\""


def user(text: str) -> list[dict[str, Any]]:
    """A one-message conversation."""
    return [{"role": "user", "content": text}]


def calls_of(reply: Reply) -> list[tuple[str, dict[str, Any]]]:
    """(name, arguments) of each tool call of a reply."""
    return [(call.name, call.arguments) for call in reply.tool_calls]


# --- script.py rules -------------------------------------------------------------------------


def test_parallel_calls_take_quoted_args_in_order() -> None:
    reply = decide(user(TWO_CALLS_PROMPT), TOOLS, 12)
    assert calls_of(reply) == [
        ("getStringLength", {"text": "ab"}),
        ("getStringLength", {"text": "abc"}),
    ]
    assert reply.text == ""
    assert reply.finish_reason == "tool_calls"


def test_several_strings_fill_string_params_in_schema_order() -> None:
    tool = {
        "type": "function",
        "function": {
            "name": "concat",
            "parameters": {
                "type": "object",
                "properties": {"first": {"type": "string"}, "second": {"type": "string"}},
            },
        },
    }
    reply = decide(user("please concat \"x y\" with 'it's' then concat 'z'"), [tool], 12)
    assert calls_of(reply) == [
        ("concat", {"first": "x y", "second": "it's"}),
        ("concat", {"first": "z", "second": ""}),
    ]


def test_numbers_fill_numeric_params_and_quoted_numbers_do_not_count() -> None:
    reply = decide(user("add '7' 42 and -3 then add 2.5, and getStringLength on '9'"), TOOLS, 12)
    assert calls_of(reply) == [
        ("add", {"a": 42, "b": -3, "exact": False, "note": "7"}),
        ("add", {"a": 2, "b": 0, "exact": False, "note": ""}),
        ("getStringLength", {"text": "9"}),
    ]
    number_tool = {
        "type": "function",
        "function": {"name": "scale", "parameters": {"properties": {"f": {"type": "number"}}}},
    }
    assert calls_of(decide(user("scale 2.5"), [number_tool], 12)) == [("scale", {"f": 2.5})]


def test_only_whole_word_unquoted_mentions_of_offered_tools_are_calls() -> None:
    assert decide(user("getStringLengths and addition"), TOOLS, 12).tool_calls == ()
    assert decide(user("what does 'add' do?"), TOOLS, 12).tool_calls == ()
    assert decide(user("use getStringLength on 'ab'"), [ADD], 12).tool_calls == ()
    reply = decide(user("getStringLength 'add'"), TOOLS, 12)
    assert calls_of(reply) == [("getStringLength", {"text": "add"})]


def test_tool_call_ids_are_deterministic_and_depend_on_the_conversation() -> None:
    first = decide(user(TWO_CALLS_PROMPT), TOOLS, 12)
    again = decide(user(TWO_CALLS_PROMPT), TOOLS, 12)
    other = decide(user(TWO_CALLS_PROMPT + " please"), TOOLS, 12)
    ids = [call.id for call in first.tool_calls]
    assert ids == [call.id for call in again.tool_calls]
    assert ids[0] != ids[1]
    assert set(ids).isdisjoint(call.id for call in other.tool_calls)
    for call_id in ids:
        assert call_id.startswith("call_")
        assert len(call_id) == len("call_") + 24
        int(call_id[5:], 16)
    digest = conversation_digest(user(TWO_CALLS_PROMPT))
    assert ids == [tool_call_id(digest, 0), tool_call_id(digest, 1)]


def test_tool_results_are_answered_with_each_result_verbatim() -> None:
    first = decide(user(TWO_CALLS_PROMPT), TOOLS, 12)
    assistant = {
        "role": "assistant",
        "content": None,
        "tool_calls": [
            {
                "id": call.id,
                "type": "function",
                "function": {"name": call.name, "arguments": call.arguments_json()},
            }
            for call in first.tool_calls
        ],
    }
    results = [
        {"role": "tool", "tool_call_id": first.tool_calls[0].id, "content": "2"},
        {"role": "tool", "tool_call_id": first.tool_calls[1].id, "content": '{"len": 3}'},
    ]
    reply = decide([*user(TWO_CALLS_PROMPT), assistant, *results], TOOLS, 12)
    assert reply.tool_calls == ()
    assert reply.finish_reason == "stop"
    assert reply.text == 'getStringLength returned 2 and getStringLength returned {"len": 3}.'


def test_tool_result_in_parts_form_is_quoted_as_joined_text() -> None:
    messages = [
        *user("add 1 2"),
        {
            "role": "assistant",
            "tool_calls": [{"id": "call_1", "function": {"name": "add", "arguments": "{}"}}],
        },
        {
            "role": "tool",
            "tool_call_id": "call_1",
            "content": [{"type": "text", "text": "three "}, {"type": "text", "text": "(3)"}],
        },
    ]
    assert decide(messages, TOOLS, 12).text == "add returned three (3)."


def test_default_reply_is_deterministic_has_the_asked_length_and_depends_on_input() -> None:
    for words in (1, 4, 5, 12, 40):
        reply = decide(user("hello there, model"), TOOLS, words)
        assert reply.tool_calls == ()
        assert len(reply.text.split()) == words
        assert reply == decide(user("hello there, model"), TOOLS, words)
    text = default_reply("hello there, model", 12)
    assert text.startswith(REPLY_PREFIX + " hello there, model ")
    assert text != default_reply("goodbye", 12)
    long_prompt = " ".join(f"w{i}" for i in range(50))
    assert default_reply(long_prompt, 6) == f"{REPLY_PREFIX} w0 w1"


def test_user_content_in_parts_form_is_read_as_text() -> None:
    messages = [
        {"role": "user", "content": [{"type": "text", "text": "use getStringLength on 'ab'"}]}
    ]
    assert calls_of(decide(messages, TOOLS, 12)) == [("getStringLength", {"text": "ab"})]


def test_stream_pieces_join_back_exactly() -> None:
    text = " hello  there\nworld "
    assert text_pieces(text) == [" hello", "  there", "\nworld "]
    assert "".join(text_pieces(text)) == text
    assert argument_pieces("{}") == ["{", "}"]
    arguments = '{"text":"abcdefghij"}'
    pieces = argument_pieces(arguments)
    assert len(pieces) >= 2
    assert "".join(pieces) == arguments


# --- the server, as a real process -----------------------------------------------------------


def free_port() -> int:
    """A TCP port nobody listens on right now."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


@pytest.fixture(scope="module", params=[0.0, 0.002], ids=["no-delay", "paced"])
def base_url(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[str]:
    """Run `python -m offline_model` on a free port; both the one-write and the paced stream."""
    port = free_port()
    env = {**os.environ, "GATEWAY_OFFLINE__TOKEN_DELAY_S": str(request.param)}
    log = tmp_path_factory.mktemp("offline") / "stderr.log"
    with log.open("wb") as stderr:
        process = subprocess.Popen(
            [sys.executable, "-m", "offline_model", "--port", str(port)],
            cwd=ROOT,
            env=env,
            stdout=subprocess.DEVNULL,
            stderr=stderr,
        )
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 20
        while True:
            if process.poll() is not None:
                pytest.fail(f"offline model exited: {log.read_text()}")
            try:
                if httpx.get(f"{url}/health", timeout=1).status_code == 200:
                    break
            except httpx.TransportError:
                pass
            if time.monotonic() > deadline:
                pytest.fail("offline model did not answer /health")
            time.sleep(0.05)
        yield url
    finally:
        process.terminate()
        try:
            process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


def sse_events(base_url: str, body: dict[str, Any]) -> list[str]:
    """POST a streamed request and return the raw `data:` payloads, checking the framing."""
    response = httpx.post(f"{base_url}/v1/chat/completions", json=body, timeout=10)
    assert response.status_code == 200
    assert response.headers["content-type"].startswith("text/event-stream")
    text = response.text
    assert text.endswith("\n\n")
    blocks = text[:-2].split("\n\n")
    assert all(block.startswith("data: ") and "\n" not in block for block in blocks)
    return [block[len("data: ") :] for block in blocks]


def chunks_of(events: list[str]) -> list[dict[str, Any]]:
    """Decode every event but the final `[DONE]`, which must be last and only once."""
    assert events[-1] == "[DONE]"
    assert events.count("[DONE]") == 1
    return [orjson.loads(event) for event in events[:-1]]


def check_envelope(chunk: dict[str, Any], model: str, first: dict[str, Any]) -> None:
    """Every chunk carries the same id/created/model and OpenAI's fixed fields."""
    assert chunk["id"].startswith("chatcmpl-")
    assert chunk["object"] == "chat.completion.chunk"
    assert chunk["id"] == first["id"]
    assert chunk["created"] == first["created"]
    assert chunk["model"] == model
    assert chunk["system_fingerprint"] is None


def test_raw_stream_of_parallel_tool_calls(base_url: str) -> None:
    body = {
        "model": "some-model",
        "messages": user(TWO_CALLS_PROMPT),
        "tools": TOOLS,
        "stream": True,
        "stream_options": {"include_usage": True},
    }
    chunks = chunks_of(sse_events(base_url, body))
    for chunk in chunks:
        check_envelope(chunk, "some-model", chunks[0])
        assert chunk["usage"] is None or chunk is chunks[-1]

    *choice_chunks, usage_chunk = chunks
    assert usage_chunk["choices"] == []
    usage = usage_chunk["usage"]
    assert usage["prompt_tokens"] == 8
    assert usage["total_tokens"] == usage["prompt_tokens"] + usage["completion_tokens"] > 8

    choices = [chunk["choices"][0] for chunk in choice_chunks]
    assert all(len(chunk["choices"]) == 1 for chunk in choice_chunks)
    assert all(c["index"] == 0 and c["logprobs"] is None for c in choices)
    assert choices[0]["delta"] == {"role": "assistant", "content": None}
    assert choices[-1] == {"index": 0, "delta": {}, "logprobs": None, "finish_reason": "tool_calls"}
    assert all(c["finish_reason"] is None for c in choices[:-1])

    tool_deltas = [d for c in choices[1:-1] for d in c["delta"]["tool_calls"]]
    assert all(set(c["delta"]) == {"tool_calls"} for c in choices[1:-1])
    assert all("index" in d for d in tool_deltas)
    calls: dict[int, dict[str, Any]] = {}
    for delta in tool_deltas:
        if delta["index"] not in calls:
            assert delta["id"].startswith("call_")
            assert delta["type"] == "function"
            assert delta["function"] == {"name": "getStringLength", "arguments": ""}
            calls[delta["index"]] = {"id": delta["id"], "pieces": []}
        else:
            assert set(delta) == {"index", "function"}
            assert set(delta["function"]) == {"arguments"}
            calls[delta["index"]]["pieces"].append(delta["function"]["arguments"])
    assert sorted(calls) == [0, 1]
    assert calls[0]["id"] != calls[1]["id"]
    assert all(len(call["pieces"]) >= 2 for call in calls.values())
    arguments = [orjson.loads("".join(calls[i]["pieces"])) for i in (0, 1)]
    assert arguments == [{"text": "ab"}, {"text": "abc"}]


def test_raw_stream_of_text_without_usage(base_url: str) -> None:
    body = {"model": "m", "messages": user("tell me a story"), "stream": True}
    chunks = chunks_of(sse_events(base_url, body))
    for chunk in chunks:
        check_envelope(chunk, "m", chunks[0])
        assert "usage" not in chunk
        assert len(chunk["choices"]) == 1
    deltas = [chunk["choices"][0]["delta"] for chunk in chunks]
    assert deltas[0] == {"role": "assistant", "content": ""}
    assert deltas[-1] == {}
    assert chunks[-1]["choices"][0]["finish_reason"] == "stop"
    pieces = [delta["content"] for delta in deltas[1:-1]]
    assert len(pieces) == 12
    assert "".join(pieces) == default_reply("tell me a story", 12)
    assert pieces[:3] == ["Offline", " model", " reply"]


def test_openai_sdk_streams_and_non_streams_the_same_tool_calls(base_url: str) -> None:
    client = openai.OpenAI(base_url=f"{base_url}/v1", api_key="x")
    tools: Any = TOOLS
    messages: Any = user("use getStringLength on 'hello world' then add 40 2")
    whole = client.chat.completions.create(model="offline-model", messages=messages, tools=tools)
    choice = whole.choices[0]
    assert choice.finish_reason == "tool_calls"
    assert choice.message.content is None
    assert whole.usage is not None
    assert whole.usage.total_tokens == whole.usage.prompt_tokens + whole.usage.completion_tokens
    expected = [
        (call.id, call.function.name, orjson.loads(call.function.arguments))
        for call in choice.message.tool_calls or []
        if call.type == "function"
    ]
    assert [(name, args) for _, name, args in expected] == [
        ("getStringLength", {"text": "hello world"}),
        ("add", {"a": 40, "b": 2, "exact": False, "note": ""}),
    ]

    stream = client.chat.completions.create(
        model="offline-model",
        messages=messages,
        tools=tools,
        stream=True,
        stream_options={"include_usage": True},
    )
    ids: dict[int, str] = {}
    names: dict[int, str] = {}
    arguments: dict[int, str] = {}
    finish_reasons = []
    usage_seen = 0
    for chunk in stream:
        if chunk.usage is not None:
            usage_seen += 1
            assert chunk.choices == []
        for streamed in chunk.choices:
            finish_reasons.append(streamed.finish_reason)
            for delta in streamed.delta.tool_calls or []:
                if delta.id is not None:
                    ids[delta.index] = delta.id
                if delta.function is not None and delta.function.name is not None:
                    names[delta.index] = delta.function.name
                if delta.function is not None and delta.function.arguments:
                    arguments[delta.index] = (
                        arguments.get(delta.index, "") + delta.function.arguments
                    )
    assert usage_seen == 1
    assert finish_reasons[-1] == "tool_calls"
    streamed_calls = [(ids[i], names[i], orjson.loads(arguments[i])) for i in sorted(ids)]
    assert streamed_calls == expected


def test_openai_sdk_text_and_tool_result_round_trip(base_url: str) -> None:
    client = openai.OpenAI(base_url=f"{base_url}/v1", api_key="x")
    # The SDK types messages/tools as TypedDicts; these plain dicts are the same JSON.
    messages: Any = user("getStringLength 'abc'")
    tools: Any = [STRING_LENGTH]
    first = client.chat.completions.create(model="offline-model", messages=messages, tools=tools)
    call = (first.choices[0].message.tool_calls or [])[0]
    assert call.type == "function"
    history: Any = [
        *messages,
        first.choices[0].message.model_dump(exclude_none=True),
        {"role": "tool", "tool_call_id": call.id, "content": "3"},
    ]
    stream = client.chat.completions.create(model="offline-model", messages=history, stream=True)
    text = "".join(chunk.choices[0].delta.content or "" for chunk in stream if chunk.choices)
    assert text == "getStringLength returned 3."
    plain = client.chat.completions.create(model="offline-model", messages=history)
    assert plain.choices[0].message.content == text
    assert plain.choices[0].finish_reason == "stop"
    assert [m.id for m in client.models.list()] == ["offline-model"]


def test_langchain_streams_accumulated_tool_calls(base_url: str) -> None:
    model = ChatOpenAI(base_url=f"{base_url}/v1", api_key=SecretStr("x"), model="offline-model")
    bound = model.bind_tools([STRING_LENGTH, ADD])
    total: AIMessageChunk | None = None
    for chunk in bound.stream(TWO_CALLS_PROMPT + " and add 5 6"):
        assert isinstance(chunk, AIMessageChunk)
        total = chunk if total is None else total + chunk
    assert total is not None
    assert [(call["name"], call["args"]) for call in total.tool_calls] == [
        ("getStringLength", {"text": "ab"}),
        ("getStringLength", {"text": "abc"}),
        ("add", {"a": 5, "b": 6, "exact": False, "note": ""}),
    ]
    assert all(str(call["id"]).startswith("call_") for call in total.tool_calls)
    assert total.response_metadata.get("finish_reason") == "tool_calls"


def test_bad_requests_get_openai_errors(base_url: str) -> None:
    url = f"{base_url}/v1/chat/completions"
    bad_json = httpx.post(url, content=b"{not json", headers={"content-type": "application/json"})
    assert bad_json.status_code == 400
    error = bad_json.json()["error"]
    assert error["type"] == "invalid_request_error"
    assert error["code"] == "invalid_json"
    assert error["message"]

    missing = httpx.post(url, json={"model": "offline-model"})
    assert missing.status_code == 400
    assert missing.json()["error"]["code"] == "missing_required_parameter"
    assert missing.json()["error"]["param"] == "messages"

    client = openai.OpenAI(base_url=f"{base_url}/v1", api_key="x", max_retries=0)
    with pytest.raises(openai.BadRequestError):
        client.chat.completions.create(model="offline-model", messages=[])

    assert httpx.get(f"{base_url}/v1/nowhere").json()["error"]["type"] == "invalid_request_error"
