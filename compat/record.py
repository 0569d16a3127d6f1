"""Probe a running llama.cpp server with the requests the gateway makes, and record the raw
answers as transcripts (`compat.transcripts`): `python -m compat.run --record`.

Every request is sent as the wire adapter sends it (same headers, `stream_options` with a
stream), with the gateway's own schema of `getStringLength`, at temperature 0 with a seed.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import orjson
from langchain_core.utils.function_calling import convert_to_openai_tool

from compat.llama import CHAT_FORMAT, MODEL_ALIAS, compat_versions
from compat.transcripts import FIXTURES, Transcript, save
from examples.tools import getStringLength

SYSTEM_PROMPT = "You are a helpful assistant."
"""The chatml-function-calling template lists the tools only inside a system message."""
PROMPT = "Call getStringLength with text hello"
"""No quotes: the template HTML-escapes every message, and the model copies `&#39;`."""
SYSTEM = {"role": "system", "content": SYSTEM_PROMPT}
USER = {"role": "user", "content": PROMPT}
GREETING = {"role": "user", "content": "Say hi"}
"""A prompt this model answers with a message rather than a tool call."""
TOOLS = [convert_to_openai_tool(getStringLength)]
FORCED = {"type": "function", "function": {"name": "getStringLength"}}
SAMPLING: dict[str, Any] = {"temperature": 0, "seed": 7, "max_tokens": 64}
CALL_ID = "call__0_getStringLength_cmpl-recorded"
"""An id in the server's own format (`call__<index>_<name>_<completion id>`)."""
CALL = {
    "id": CALL_ID,
    "type": "function",
    "function": {"name": "getStringLength", "arguments": '{"text": "hello"}'},
}
RESULT = {"role": "tool", "tool_call_id": CALL_ID, "content": "5"}
_ABSENT = object()


def chat(messages: list[dict[str, Any]], stream: bool, **options: Any) -> dict[str, Any]:
    """A request body as the wire adapter builds it."""
    body = {"model": MODEL_ALIAS, "messages": messages, **SAMPLING, **options, "stream": stream}
    if stream:
        body["stream_options"] = {"include_usage": True}
    return body


def follow_up(content: object) -> list[dict[str, Any]]:
    """The turn after an approved call: the assistant's tool-call message with `content` as
    given (`_ABSENT` leaves the key out), then the tool's result."""
    assistant: dict[str, Any] = {"role": "assistant"}
    if content is not _ABSENT:
        assistant["content"] = content
    assistant["tool_calls"] = [CALL]
    return [SYSTEM, USER, assistant, RESULT]


def scenarios() -> Iterator[tuple[str, str, dict[str, Any]]]:
    """(name, what it probes, request body), each streamed and not where both matter."""
    first = [SYSTEM, USER]
    for stream, suffix in ((False, ""), (True, "_stream")):
        yield (
            f"tools_no_choice{suffix}",
            "tools offered without tool_choice (what the gateway sends today)",
            chat(first, stream, tools=TOOLS),
        )
        yield (
            f"tools_auto{suffix}",
            'tools offered with tool_choice "auto"',
            chat(first, stream, tools=TOOLS, tool_choice="auto"),
        )
        yield (
            f"tools_auto_message{suffix}",
            'tools offered with tool_choice "auto", a prompt the model answers in text',
            chat([SYSTEM, GREETING], stream, tools=TOOLS, tool_choice="auto"),
        )
        yield (
            f"tools_forced{suffix}",
            "tools offered with the tool forced by tool_choice",
            chat(first, stream, tools=TOOLS, tool_choice=FORCED),
        )
    for content, label in ((None, "null"), (_ABSENT, "missing"), ("", "empty")):
        yield (
            f"followup_content_{label}",
            f"the turn after a tool call, assistant content {label}, tools offered (auto)",
            chat(follow_up(content), False, tools=TOOLS, tool_choice="auto"),
        )
        yield (
            f"final_turn_content_{label}_stream",
            f"the turn after a tool call, assistant content {label}, streamed with no tools "
            "(the last tool round used)",
            chat(follow_up(content), True),
        )
    yield "plain", "a plain chat, no tools", chat(first, False)
    yield "plain_stream", "a plain chat streamed, usage asked for", chat(first, True)


def server_facts(model: Path) -> dict[str, str]:
    """What answered, stored with each transcript."""
    return {**compat_versions(), "model": model.name, "chat_format": CHAT_FORMAT}


def record(base_url: str, model: Path, folder: Path = FIXTURES) -> list[Path]:
    """Send every scenario to the server at `base_url` (no `/v1`); the files written."""
    server = server_facts(model)
    written = []
    headers = {
        "Content-Type": "application/json",
        "Accept": "text/event-stream",
        "Accept-Encoding": "identity",
    }
    for name, description, body in scenarios():
        # A fresh connection each: after an empty 200 the server drops the one it used.
        with httpx.Client(base_url=base_url, timeout=300, headers=headers) as client:
            response = client.post("/v1/chat/completions", content=orjson.dumps(body))
        transcript = Transcript(
            scenario=name,
            description=description,
            request=body,
            status=response.status_code,
            headers=dict(response.headers),
            body=response.content,
            server=server,
        )
        written.append(save(transcript, folder))
        print(f"{name}: HTTP {response.status_code}, {len(response.content)} bytes", flush=True)
    return written
