"""Fuzzing every route of a real replica: no input gets a 5xx or a cut stream.

Three hypothesis tests against one replica (with a worker, Redis and the offline model):

- any request: a route from the app's own route table (or an unknown path, or a wrong
  method), any session id in the path, query parameters (the real names, with odd numbers:
  Unicode digits, 5000 digits, inf, nan, negative), headers (Last-Event-ID, Content-Type,
  Host, Authorization, X-Conversation-Id) and any body (none, bytes, any JSON, or JSON
  shaped like the route's body with odd values);
- chat bodies that pass validation, with hostile contents (tools with any schema, any
  `tool_choice`, content parts, assistant tool calls with any arguments, extreme numbers),
  streamed or not, on both protocols: these reach the model, the policy and the workers;
- the session endpoints on sessions that exist: read, re-attach with any Last-Event-ID,
  decide with any well-typed decision, the first version's approve.

Every answer must be below 500, every error a JSON body with a stable code, and every
event stream must end with `data: [DONE]`. Approvals time out after 2 s, so a stream held
for a decision ends on its own. The approvals feed never ends by design: it must open
with its `ready` event, and is closed there.
"""

from __future__ import annotations

import json
import re
import time
import urllib.parse
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

import httpx
import pytest
from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st
from starlette.routing import Route

from core.settings import Settings
from gateway.app import create_app
from gateway.routes import LEGACY_PATHS
from tests.conftest import Replica, Stack
from tests.processes import RedisServer

ROUTES = sorted(
    (method, route.path)
    for route in create_app(Settings()).routes
    if isinstance(route, Route)
    for method in route.methods or ()
    if method != "HEAD"
)
"""Every (method, path template) the gateway serves, read from its route table."""

ODD_ROUTES = [("GET", "/v1/nothing-here"), ("DELETE", "/v1/approvals"), ("PUT", "/")]
METHODS = ["GET", "POST", "PUT", "DELETE", "PATCH", "OPTIONS"]
QUERY_NAMES = [
    "limit", "status", "after", "since", "until", "session", "tool", "actor", "event",
    "last_event_id",
]  # fmt: skip
HUGE = "9" * 5000
HUGE_MARK = "__HUGE_INTEGER__"
"""A JSON string replaced by a 5000-digit integer after encoding (json.dumps cannot)."""
SESSION_ID = re.compile(r"as_[0-9a-f]{32}")
STREAM_BOUND_S = 30.0
FEED = "/v1/approvals/events"
FUZZ = settings(
    deadline=None,
    suppress_health_check=[
        HealthCheck.function_scoped_fixture,
        HealthCheck.too_slow,
        HealthCheck.data_too_large,
    ],
)

odd_numbers = st.sampled_from(
    [
        "²", "\u0663", "\uff11", HUGE, "-1", "0", "007", "1e400", "inf", "-inf", "nan",
        "1.5", "1" * 23, "99999999999999999999999-0", "1-1", "0-0", "", " 1", "0x10",
        "1_000", "18446744073709551615-18446744073709551615", "9223372036854775807",
    ]
)  # fmt: skip
numbers_as_text = st.one_of(
    odd_numbers,
    st.integers().map(str),
    st.floats().map(str),
    st.from_regex(r"[0-9]{1,25}-[0-9]{1,25}", fullmatch=True),
)
json_scalars = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(),
    st.sampled_from([2**63, -(2**63) - 1, 2**64, 10**30, HUGE_MARK]),
    st.floats(),
    st.text(max_size=20),
)
json_values = st.recursive(
    json_scalars,
    lambda inner: (
        st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=8), inner, max_size=3)
    ),
    max_leaves=8,
)
json_objects = st.dictionaries(st.text(max_size=8), json_values, max_size=3)
prompts = st.sampled_from(
    [
        "hi",
        "use getStringLength on 'fuzz'",
        "lookupCapital of 'France'",
        "forbiddenTool on 'x'",
        "explode with 'boom'",
        "use getStringLength on 'a' and lookupCapital of 'Japan'",
    ]
) | st.text(max_size=40)
queries = st.dictionaries(
    st.sampled_from(QUERY_NAMES) | st.text(min_size=1, max_size=8),
    st.sampled_from(["1", "pending", "0-0", "1700000000.5"]) | numbers_as_text | st.text(),
    max_size=3,
)
header_text = st.text(max_size=40)
headers = st.fixed_dictionaries(
    {},
    optional={
        "Last-Event-ID": numbers_as_text | header_text,
        "Host": st.sampled_from(["localhost", "[::1]", "evil.example", ""]) | header_text,
        "Authorization": st.sampled_from(["Bearer x", "Basic eA==", "bearer"]) | header_text,
        "X-Conversation-Id": header_text | st.just("c" * 999),
    },
)
content_types = st.sampled_from(
    ["application/json", "APPLICATION/JSON; charset=utf-8", "text/plain", "", "json"]
) | st.text(max_size=20)


def shaped_body(path: str, ids: st.SearchStrategy[str]) -> st.SearchStrategy[Any]:
    """JSON shaped like `path`'s body, each field any JSON value."""
    fields: dict[str, st.SearchStrategy[Any]] = {}
    message = st.fixed_dictionaries({"role": json_scalars, "content": prompts | json_scalars})
    if path in ("/v1/chat/completions", "/v1/chat/completion"):
        fields = {"messages": st.lists(message, max_size=2) | json_scalars}
        names = ["model", "stream", "temperature", "max_tokens", "seed", "n", "tools", "stop"]
        optional = {name: json_values for name in names}
    elif path.endswith("/decision"):
        call = st.fixed_dictionaries(
            {"tool_call_id": json_scalars, "decision": json_scalars},
            optional={"arguments": json_values, "result": json_values, "grant": json_values},
        )
        optional = {"decision": json_scalars, "reason": json_scalars, "calls": st.lists(call)}
    elif path == "/v1/chat/approve":
        optional = {"sessionid": ids | json_scalars, "approved": json_scalars}
    else:
        return json_values
    return st.fixed_dictionaries(fields, optional=optional)


def encode(value: Any) -> bytes:
    return json.dumps(value).replace(json.dumps(HUGE_MARK), HUGE).encode()


# Chat bodies that pass validation; their contents are the hostile part.
client_tool = st.fixed_dictionaries(
    {
        "type": st.just("function"),
        "function": st.fixed_dictionaries(
            {"name": st.from_regex(r"[A-Za-z0-9_-]{1,64}", fullmatch=True)},
            optional={"description": st.text(max_size=20), "parameters": json_objects},
        ),
    }
)
content_parts = st.lists(
    st.fixed_dictionaries({"type": st.just("text"), "text": prompts}) | json_objects, max_size=2
)
assistant_call = st.fixed_dictionaries(
    {
        "id": st.text(max_size=10),
        "function": st.fixed_dictionaries(
            {
                "name": st.text(max_size=20),
                "arguments": st.text(max_size=20) | json_values.map(encode).map(bytes.decode),
            }
        ),
    }
)
valid_message = st.one_of(
    st.fixed_dictionaries(
        {"role": st.sampled_from(["user", "system", "developer"]), "content": prompts}
    ),
    st.fixed_dictionaries({"role": st.just("user"), "content": content_parts}),
    st.fixed_dictionaries(
        {"role": st.just("assistant"), "content": st.none() | st.text(max_size=20)},
        optional={"tool_calls": st.lists(assistant_call, max_size=2)},
    ),
    st.fixed_dictionaries(
        {"role": st.just("tool"), "content": st.text(max_size=20), "tool_call_id": st.text()}
    ),
)
int64 = st.integers(-(2**63), 2**63 - 1)
valid_chat = st.fixed_dictionaries(
    {
        "messages": st.tuples(st.lists(valid_message, max_size=2), prompts).map(
            lambda parts: [*parts[0], {"role": "user", "content": parts[1]}]
        )
    },
    optional={
        "stream": st.booleans(),
        "model": st.text(max_size=20),
        "temperature": st.floats(0, 2),
        "top_p": st.floats(0, 1),
        "max_tokens": st.integers(1, 2**63 - 1),
        "max_completion_tokens": st.integers(1, 2**63 - 1),
        "seed": int64,
        "stop": st.text(max_size=5) | st.lists(st.text(max_size=5), max_size=3),
        "tools": st.lists(client_tool, max_size=2),
        "tool_choice": st.sampled_from(["auto", "none", "required"]) | st.text() | json_objects,
        "stream_options": st.fixed_dictionaries({"include_usage": st.booleans()}),
    },
)
valid_legacy_chat = st.fixed_dictionaries(
    {
        "messages": st.lists(
            st.fixed_dictionaries(
                {"role": st.sampled_from(["system", "user", "assistant"]), "content": prompts}
            ),
            min_size=1,
            max_size=3,
        )
    },
    optional={
        "model": st.text(max_size=20),
        "temperature": st.floats(0, 2),
        "max_tokens": st.integers(1, 2**63 - 1),
    },
)
grant = st.fixed_dictionaries(
    {}, optional={"ttl_s": st.integers(1, 7 * 24 * 3600) | int64, "same_arguments": st.booleans()}
)
JSON = {"Content-Type": "application/json"}


def decision_bodies(call_ids: list[str]) -> st.SearchStrategy[dict[str, Any]]:
    """Well-typed decisions, per call on the session's own call ids or on any id."""
    # Always an index, whether or not there are ids: the draws must keep their shape.
    own = st.integers(0, 255).map(lambda i: call_ids[i % len(call_ids)] if call_ids else "c")
    call = st.fixed_dictionaries(
        {
            "tool_call_id": own | st.text(min_size=1, max_size=20),
            "decision": st.sampled_from(["approve", "reject", "edit", "respond"]),
        },
        optional={
            "reason": st.text(max_size=50),
            "arguments": st.fixed_dictionaries({"text": st.text()}) | json_objects,
            "result": json_values,
            "arguments_sha256": st.from_regex(r"[0-9a-f]{64}", fullmatch=True),
            "grant": grant,
        },
    )
    return st.one_of(
        st.fixed_dictionaries(
            {"decision": st.sampled_from(["approve", "reject"])},
            optional={"reason": st.text(max_size=50)},
        ),
        st.fixed_dictionaries({"calls": st.lists(call, min_size=1, max_size=3)}),
    )


@dataclass
class Target:
    """The replica under fuzz, and the session ids it has handed out so far."""

    replica: Replica
    session_ids: list[str] = field(default_factory=list)

    def known_ids(self) -> st.SearchStrategy[str]:
        """Ids of sessions the replica handed out, the newest (likely pending) first."""
        # An index, not sampled_from: the list grows, and the draws must keep their shape.
        index = st.integers(0, 1 << 16)
        return index.map(lambda i: self.session_ids[-1 - i % len(self.session_ids)])

    def ids(self) -> st.SearchStrategy[str]:
        """Real session ids, or any text."""
        return self.known_ids() | st.just("as_" + "0" * 32) | st.text(max_size=40)

    def learn(self, body: bytes) -> None:
        """Keep the session ids an answer named, for later path parameters and bodies."""
        for session_id in SESSION_ID.findall(body.decode(errors="replace")):
            if session_id not in self.session_ids:
                self.session_ids.append(session_id)

    def open_session(self, streamed: bool) -> None:
        """A pending session: the first version's (its answer does not wait), or a held
        stream whose client hangs up at the approval notice (its run goes on)."""
        url, prompt = self.replica.url, [{"role": "user", "content": "getStringLength of 'x'"}]
        if not streamed:
            self.learn(httpx.post(f"{url}/v1/chat/completion", json={"messages": prompt}).content)
            return
        body = {"messages": prompt, "stream": True}
        with httpx.stream("POST", f"{url}/v1/chat/completions", json=body) as held:
            self.learn(next(line for line in held.iter_lines() if "approval" in line).encode())

    def call_ids(self, quoted_id: str) -> list[str]:
        """The tool call ids of a session, or none when there is no such session."""
        response = httpx.get(f"{self.replica.url}/v1/approvals/{quoted_id}")
        if response.status_code != 200:
            return []
        return [call["id"] for call in response.json()["tool_calls"]]

    def send(
        self,
        method: str,
        path: str,
        *,
        params: dict[str, str] | None = None,
        headers: dict[str, str] | None = None,
        body: bytes | None = None,
    ) -> None:
        """Send one request, read all of it, and check the answer (see the module doc)."""
        sent = {name.encode(): header_value(value) for name, value in (headers or {}).items()}
        timeout = httpx.Timeout(STREAM_BOUND_S, connect=5)
        with (
            httpx.Client(base_url=self.replica.url, timeout=timeout) as client,
            client.stream(method, path, params=params, headers=sent, content=body) as response,
        ):
            received = read(response, live=path.split("?")[0] == FEED)
        template = re.sub(r"^/v1/approvals/[^/]+", "/v1/approvals/{id}", path.split("?")[0])
        event(f"{method} {template} -> {response.status_code}")
        check(path, response, received)
        if response.status_code < 300:  # an error names the id it was sent, real or not
            self.learn(received)


@pytest.fixture(scope="module")
def target(
    redis_server: RedisServer, offline_model: str, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Target]:
    """A replica and a worker (approvals time out after 2 s), with a pending first-version
    session and a run whose client hung up."""
    overrides = {"GATEWAY_APPROVAL_TIMEOUT_S": "2", "GATEWAY_HEARTBEAT_INTERVAL_S": "1"}
    stack = Stack(redis_server, offline_model, tmp_path_factory.mktemp("fuzz"), "fuzz", overrides)
    stack.add_worker()
    found = Target(stack.add_replica())
    found.open_session(streamed=False)
    found.open_session(streamed=True)
    yield found
    stack.stop()


def header_value(text: str) -> bytes:
    """As a client would send it: UTF-8, without what HTTP forbids (controls, outer spaces)."""
    return bytes(byte for byte in text.encode() if byte >= 0x20 and byte != 0x7F).strip(b" ")


def read(response: httpx.Response, *, live: bool = False) -> bytes:
    """The whole body; a stream must end within `STREAM_BOUND_S`. Of a `live` stream (the
    feed, which does not end), its first event."""
    started, parts = time.monotonic(), []
    for part in response.iter_raw():
        parts.append(part)
        if live and response.status_code == 200 and b"\n\n" in b"".join(parts):
            break
        assert time.monotonic() - started < STREAM_BOUND_S, "the stream did not end"
    return b"".join(parts)


def check(path: str, response: httpx.Response, body: bytes) -> None:
    """Below 500; an error is JSON with a code; a stream ends with `[DONE]`."""
    assert response.status_code < 500, body[:500]
    if path.split("?")[0] == FEED and response.status_code == 200:
        assert body.startswith(b"id: ") and b"\nevent: ready\n" in body, body[:500]
    elif response.headers.get("content-type", "").startswith("text/event-stream"):
        assert body.endswith(b"data: [DONE]\n\n"), body[-500:]
    elif response.status_code >= 400:
        error = json.loads(body)
        if path in LEGACY_PATHS and "type" in error:  # the first version's shape
            assert error["type"] == "error" and isinstance(error["code"], str)
        else:
            assert isinstance(error["error"]["code"], str), error


@settings(FUZZ, max_examples=300)
@given(data=st.data())
def test_any_request_gets_an_answer_below_500(target: Target, data: st.DataObject) -> None:
    routes = st.sampled_from(ROUTES) | st.sampled_from(ODD_ROUTES)
    method, template = data.draw(routes, label="route")
    method = data.draw(st.just(method) | st.sampled_from(METHODS), label="method")
    session_id = data.draw(target.ids(), label="session id")
    path = template.replace("{session_id}", urllib.parse.quote(session_id, safe=""))
    sent = data.draw(headers, label="headers")
    body = data.draw(
        st.none()
        | st.binary(max_size=64)
        | json_values.map(encode)
        | shaped_body(template, target.ids()).map(encode),
        label="body",
    )
    if body is not None:
        sent["Content-Type"] = data.draw(content_types, label="content type")
    target.send(method, path, params=data.draw(queries, label="query"), headers=sent, body=body)


@settings(FUZZ, max_examples=80)
@given(
    request=st.tuples(st.just("/v1/chat/completions"), valid_chat)
    | st.tuples(st.just("/v1/chat/completion"), valid_legacy_chat),
    conversation=st.text(max_size=200),
)
def test_chat_bodies_that_pass_validation_never_fail_or_cut_the_stream(
    target: Target, request: tuple[str, dict[str, Any]], conversation: str
) -> None:
    path, body = request
    headers = {**JSON, "X-Conversation-Id": conversation}
    target.send("POST", path, headers=headers, body=encode(body))


@settings(FUZZ, max_examples=120)
@given(data=st.data())
def test_session_endpoints_take_any_id_and_header(target: Target, data: st.DataObject) -> None:
    session_id = data.draw(target.known_ids(), label="session id")
    quoted = urllib.parse.quote(session_id, safe="")
    actions = ["open", "open held", "read", "reattach", "decide", "approve"]
    action = data.draw(st.sampled_from(actions), label="action")
    if action.startswith("open"):  # sessions expire after 2 s: keep some pending
        target.open_session(streamed=action == "open held")
    elif action == "read":
        target.send("GET", f"/v1/approvals/{quoted}")
    elif action == "reattach":
        last = data.draw(st.integers(0, 40).map(str) | numbers_as_text | header_text, label="id")
        if data.draw(st.booleans(), label="in the Last-Event-ID header"):
            target.send("GET", f"/v1/approvals/{quoted}/stream", headers={"Last-Event-ID": last})
        else:
            target.send("GET", f"/v1/approvals/{quoted}/stream", params={"last_event_id": last})
    elif action == "decide":
        decision = data.draw(decision_bodies(target.call_ids(quoted)), label="decision")
        path = f"/v1/approvals/{quoted}/decision"
        target.send("POST", path, headers=JSON, body=encode(decision))
    else:
        approve = {"sessionid": session_id, "approved": data.draw(st.booleans(), label="approved")}
        target.send("POST", "/v1/chat/approve", headers=JSON, body=encode(approve))
