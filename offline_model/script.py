"""The offline model's "brain": decides a reply from OpenAI-style messages and tools, no I/O.

Rules, first match wins:

1. The conversation ends with tool results: one sentence quoting every result verbatim.
2. The latest user message names offered tools: one call per mention, arguments taken
   from the quoted texts and numbers that follow each mention.
3. Otherwise: a fixed-length text that depends on the user's words.
"""

from __future__ import annotations

import hashlib
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import orjson

Message = Mapping[str, Any]
Tool = Mapping[str, Any]

REPLY_PREFIX = "Offline model reply to:"

# Padding for short prompts; fixed so the reply only depends on the input.
FILLER_WORDS = (
    "alpha", "bravo", "charlie", "delta", "echo", "foxtrot", "golf", "hotel",
    "india", "juliett", "kilo", "lima", "mike", "november", "oscar", "papa",
)  # fmt: skip

# A single quote only opens after a non-word char and only closes before one, so the
# apostrophes in "don't" or "it's" are not taken for quotes; the lazy body lets a
# quoted text contain such apostrophes ('it's').
_QUOTED = re.compile(
    r"\"(?P<d>[^\"]*)\""
    r"|\u201c(?P<cd>[^\u201d]*)\u201d"  # curly double quotes
    r"|\u2018(?P<cs>[^\u2019]*)\u2019"  # curly single quotes
    r"|(?<!\w)'(?P<s>.*?)'(?!\w)",
    re.DOTALL,
)
# The look-behind keeps digits glued to words ("tool2", "v1.5") from counting as numbers.
_NUMBER = re.compile(r"(?<![\w.])-?\d+(?:\.\d+)?(?!\w)")
_PIECE = re.compile(r"\s*\S+")


@dataclass(frozen=True, slots=True)
class ToolCall:
    """One function call the model asks for."""

    id: str
    name: str
    arguments: dict[str, Any]

    def arguments_json(self) -> str:
        """The arguments as the compact JSON string OpenAI puts on the wire."""
        return orjson.dumps(self.arguments).decode()


@dataclass(frozen=True, slots=True)
class Reply:
    """What the model answers: either tool calls or a text."""

    text: str = ""
    tool_calls: tuple[ToolCall, ...] = field(default=())

    @property
    def finish_reason(self) -> str:
        """OpenAI's finish_reason for this reply."""
        return "tool_calls" if self.tool_calls else "stop"


def content_text(content: object) -> str:
    """The text of a message content: a plain string or the joined text parts."""
    if isinstance(content, str):
        return content
    if isinstance(content, list):
        return "".join(
            str(part.get("text", ""))
            for part in content
            if isinstance(part, Mapping) and part.get("type") == "text"
        )
    return ""


def decide(messages: Sequence[Message], tools: Sequence[Tool], reply_words: int) -> Reply:
    """Apply the three rules to a conversation and return the reply."""
    answer = answer_tool_results(messages)
    if answer is not None:
        return Reply(text=answer)
    user_text = latest_user_text(messages)
    calls = plan_tool_calls(user_text, tools, conversation_digest(messages))
    if calls:
        return Reply(tool_calls=tuple(calls))
    return Reply(text=default_reply(user_text, reply_words))


def latest_user_text(messages: Sequence[Message]) -> str:
    """The text of the last user message, or "" when there is none."""
    for message in reversed(messages):
        if message.get("role") == "user":
            return content_text(message.get("content"))
    return ""


def answer_tool_results(messages: Sequence[Message]) -> str | None:
    """One sentence quoting the trailing tool results, or None when the last message isn't one."""
    start = len(messages)
    while start > 0 and messages[start - 1].get("role") == "tool":
        start -= 1
    if start == len(messages):
        return None
    names = _call_names(messages[:start])
    clauses = []
    for message in messages[start:]:
        name = names.get(str(message.get("tool_call_id", ""))) or message.get("name") or "tool"
        result = content_text(message.get("content"))
        clauses.append(f"{name} returned {result}" if result else f"{name} returned nothing")
    if len(clauses) == 1:
        return clauses[0] + "."
    return ", ".join(clauses[:-1]) + " and " + clauses[-1] + "."


def _call_names(history: Sequence[Message]) -> dict[str, str]:
    """Map tool_call_id to function name from the assistant message that made the calls."""
    for message in reversed(history):
        if message.get("role") == "assistant" and message.get("tool_calls"):
            return {
                str(call.get("id", "")): str(call.get("function", {}).get("name", ""))
                for call in message["tool_calls"]
                if isinstance(call, Mapping)
            }
    return {}


def conversation_digest(messages: Sequence[Message]) -> bytes:
    """A stable hash of the conversation, the seed of the tool call ids."""
    encoded = orjson.dumps(list(messages), default=_plain, option=orjson.OPT_SORT_KEYS)
    return hashlib.sha256(encoded).digest()


def _plain(value: object) -> object:
    """Let orjson encode any Mapping or Sequence a caller passes in place of dict/list."""
    if isinstance(value, Mapping):
        return dict(value)
    if isinstance(value, Sequence) and not isinstance(value, str | bytes):
        return list(value)
    raise TypeError(f"not JSON serializable: {type(value).__name__}")


def tool_call_id(digest: bytes, index: int) -> str:
    """Deterministic OpenAI-style call id for the index-th call of a conversation."""
    return "call_" + hashlib.sha256(digest + index.to_bytes(4, "big")).hexdigest()[:24]


def plan_tool_calls(text: str, tools: Sequence[Tool], digest: bytes) -> list[ToolCall]:
    """One call per whole-word mention of an offered tool in `text`, in order of appearance."""
    schemas = _function_schemas(tools)
    if not schemas or not text:
        return []
    quotes = [(m.start(), m.end(), _quote_body(m)) for m in _QUOTED.finditer(text)]
    mentions = _mentions(text, schemas, quotes)
    calls = []
    for index, (name, _, end) in enumerate(mentions):
        stop = mentions[index + 1][1] if index + 1 < len(mentions) else len(text)
        strings = [body for q_start, q_end, body in quotes if end <= q_start and q_end <= stop]
        numbers = [
            m.group() for m in _NUMBER.finditer(text, end, stop) if not _inside(m.start(), quotes)
        ]
        arguments = _fill(schemas[name], strings, numbers)
        calls.append(ToolCall(id=tool_call_id(digest, index), name=name, arguments=arguments))
    return calls


def _function_schemas(tools: Sequence[Tool]) -> dict[str, Mapping[str, Any]]:
    """Map each offered function name to its parameters schema."""
    schemas: dict[str, Mapping[str, Any]] = {}
    for tool in tools:
        function = tool.get("function")
        if tool.get("type", "function") == "function" and isinstance(function, Mapping):
            name = function.get("name")
            parameters = function.get("parameters")
            if isinstance(name, str) and name:
                schemas[name] = parameters if isinstance(parameters, Mapping) else {}
    return schemas


def _quote_body(match: re.Match[str]) -> str:
    """The text between the quote marks of a quoted-text match."""
    return next(group for group in match.groups() if group is not None)


def _inside(position: int, quotes: Sequence[tuple[int, int, str]]) -> bool:
    """Whether `position` falls inside one of the quoted spans."""
    return any(start <= position < end for start, end, _ in quotes)


def _mentions(
    text: str, schemas: Mapping[str, Any], quotes: Sequence[tuple[int, int, str]]
) -> list[tuple[str, int, int]]:
    """Whole-word tool name mentions outside quotes, in order, longest name first on overlap."""
    found: list[tuple[str, int, int]] = []
    for name in schemas:
        pattern = re.compile(r"(?<!\w)" + re.escape(name) + r"(?!\w)")
        # A name inside quotes is an argument ("echo 'echo'"), not a request to call it.
        found.extend(
            (name, m.start(), m.end())
            for m in pattern.finditer(text)
            if not _inside(m.start(), quotes)
        )
    found.sort(key=lambda item: (item[1], -item[2]))
    mentions: list[tuple[str, int, int]] = []
    for mention in found:
        if not mentions or mention[1] >= mentions[-1][2]:
            mentions.append(mention)
    return mentions


def _fill(parameters: Mapping[str, Any], strings: list[str], numbers: list[str]) -> dict[str, Any]:
    """Arguments for one call: schema properties in order, fed from the strings and numbers."""
    properties = parameters.get("properties")
    if not isinstance(properties, Mapping):
        return {}
    next_string = iter(strings)
    next_number = iter(numbers)
    arguments: dict[str, Any] = {}
    for name, schema in properties.items():
        kind = _json_type(schema)
        if kind == "integer":
            arguments[name] = int(float(next(next_number, "0")))
        elif kind == "number":
            token = next(next_number, "0")
            arguments[name] = float(token) if "." in token else int(token)
        elif kind == "boolean":
            arguments[name] = False
        elif kind == "array":
            arguments[name] = []
        elif kind == "object":
            arguments[name] = {}
        elif kind == "null":
            arguments[name] = None
        else:
            arguments[name] = next(next_string, "")
    return arguments


def _json_type(schema: object) -> str:
    """The first non-null JSON type a property schema allows ("string" when unsure)."""
    if not isinstance(schema, Mapping):
        return "string"
    kind = schema.get("type")
    if isinstance(kind, str):
        return kind
    if isinstance(kind, list):
        kinds = [k for k in kind if isinstance(k, str) and k != "null"]
        return kinds[0] if kinds else "null"
    # Pydantic writes Optional[X] as anyOf [X, null].
    for key in ("anyOf", "oneOf"):
        options = schema.get(key)
        if isinstance(options, list):
            kinds = [_json_type(option) for option in options]
            concrete = [k for k in kinds if k != "null"]
            return concrete[0] if concrete else "null"
    return "string"


def default_reply(user_text: str, reply_words: int) -> str:
    """Exactly `reply_words` words: the prefix, the user's words, then fixed filler."""
    words = [*REPLY_PREFIX.split(), *user_text.split()]
    while len(words) < reply_words:
        words.append(FILLER_WORDS[len(words) % len(FILLER_WORDS)])
    return " ".join(words[:reply_words])


def text_pieces(text: str) -> list[str]:
    """Split a text into stream deltas of one word each, whitespace kept, joining back exactly."""
    pieces = _PIECE.findall(text)
    consumed = sum(map(len, pieces))
    if consumed < len(text):
        # Trailing whitespace has no word to lead; glue it to the last piece.
        if pieces:
            pieces[-1] += text[consumed:]
        else:
            pieces = [text]
    return pieces


def argument_pieces(arguments: str, size: int = 8) -> list[str]:
    """Split a call's JSON arguments into stream deltas: ~`size` chars, at least two pieces."""
    if len(arguments) < 2:
        return [arguments]
    if len(arguments) <= size:
        half = len(arguments) // 2
        return [arguments[:half], arguments[half:]]
    return [arguments[i : i + size] for i in range(0, len(arguments), size)]


def word_count(text: str) -> int:
    """Whitespace-separated words: the offline model's notion of a token."""
    return len(text.split())
