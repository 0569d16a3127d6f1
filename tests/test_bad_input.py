"""Bad input gets a clear 4xx JSON error and changes nothing; the defaults are the safe ones."""

from __future__ import annotations

import json

import httpx
import orjson
import pytest

from core.keys import Keys
from gateway.auth import hash_key
from tests.clients import HeldStream, decide
from tests.conftest import Replica, Stack, StackFactory
from tests.processes import Process, free_port, python_module, wait_http
from tests.redis_state import wait_lease_released

KEYS_SETTING = orjson.dumps(
    [{"sha256": hash_key("key-root"), "name": "root", "tenant": "ops", "roles": ["admin"]}]
).decode()


@pytest.mark.parametrize(
    ("content", "code", "mentions"),
    [
        (b"{not json", "invalid_request", "not valid JSON"),
        (b'{"model": "m"}', "invalid_request", "messages"),
        (b'{"messages": []}', "invalid_request", "messages"),
        (b'{"messages": [{"role": "wizard", "content": "x"}]}', "invalid_request", "role"),
        (b'{"messages": [{"role": "user", "content": "x"}], "n": 3}', "invalid_request", "n"),
        (b'{"messages": [{"role": "user", "content": "x"}], "temperature": 9}', "invalid_request",
         "temperature"),
        (b"[1, 2]", "invalid_request", "body"),
    ],
)  # fmt: skip
def test_malformed_chat_requests_are_400_with_a_named_problem(
    gateway: Replica, content: bytes, code: str, mentions: str
) -> None:
    response = httpx.post(
        f"{gateway.url}/v1/chat/completions",
        content=content,
        headers={"content-type": "application/json"},
    )
    assert response.status_code == 400
    error = response.json()["error"]
    assert error["code"] == code and mentions in error["message"]


def test_client_tool_named_like_a_server_tool_is_refused(gateway: Replica) -> None:
    tool = {"type": "function", "function": {"name": "getStringLength", "parameters": {}}}
    body = {"messages": [{"role": "user", "content": "x"}], "tools": [tool]}
    response = httpx.post(f"{gateway.url}/v1/chat/completions", json=body)
    assert response.status_code == 400
    assert "getStringLength" in response.json()["error"]["message"]


def test_oversized_body_is_413_whether_declared_or_streamed(make_stack: StackFactory) -> None:
    replica = make_stack(max_body_bytes="2048").replicas[0]
    big = b'{"messages": [{"role": "user", "content": "' + b"x" * 4096 + b'"}]}'
    url, json_type = f"{replica.url}/v1/chat/completions", {"content-type": "application/json"}
    declared = httpx.post(url, content=big, headers=json_type)

    def chunks() -> object:
        yield big[:1000]
        yield big[1000:]

    streamed = httpx.post(url, content=chunks(), headers=json_type)  # type: ignore[arg-type]
    for response in (declared, streamed):
        assert response.status_code == 413
        assert response.json()["error"]["code"] == "body_too_large"


def test_too_many_messages_is_400(make_stack: StackFactory) -> None:
    replica = make_stack(max_messages="2").replicas[0]
    body = {"messages": [{"role": "user", "content": "x"}] * 3}
    response = httpx.post(f"{replica.url}/v1/chat/completions", json=body)
    assert response.status_code == 400
    assert "at most 2" in response.json()["error"]["message"]


def test_unknown_routes_and_methods_are_json_errors(gateway: Replica) -> None:
    missing = httpx.get(f"{gateway.url}/v1/nothing-here")
    assert missing.status_code == 404 and missing.json()["error"]["code"] == "not_found"
    wrong = httpx.get(f"{gateway.url}/v1/chat/completions")
    assert wrong.status_code == 405 and wrong.json()["error"]["code"] == "method_not_allowed"


def test_listing_other_statuses_is_refused(gateway: Replica) -> None:
    response = httpx.get(f"{gateway.url}/v1/approvals", params={"status": "approved"})
    assert response.status_code == 400
    assert "status" in response.json()["error"]["message"]


HUGE = "9" * 5000
"""Past Python's 4300-digit limit for int(): a ValueError where it is not checked first."""


@pytest.mark.parametrize(
    ("path", "params", "named"),
    [
        ("/v1/approvals", {"limit": "²"}, "limit"),
        ("/v1/approvals", {"limit": "\u0663"}, "limit"),  # Arabic-Indic three
        ("/v1/approvals", {"limit": HUGE}, "limit"),
        ("/v1/audit", {"limit": "²"}, "limit"),
        ("/v1/audit", {"limit": HUGE}, "limit"),
        ("/v1/audit", {"since": "inf"}, "since"),
        ("/v1/audit", {"since": "-inf"}, "since"),
        ("/v1/audit", {"since": "nan"}, "since"),
        ("/v1/audit", {"since": "1e400"}, "since"),
        ("/v1/audit", {"since": HUGE}, "since"),
        ("/v1/audit", {"since": "-1"}, "since"),
        ("/v1/audit", {"since": "\u0663"}, "since"),
        ("/v1/audit", {"until": "1e300"}, "until"),
        ("/v1/audit", {"after": "99999999999999999999999-0"}, "after"),
        ("/v1/audit", {"after": "\u0663-\u0663"}, "after"),
        ("/v1/audit", {"after": "1-"}, "after"),
        ("/v1/audit", {"after": f"{HUGE}-0"}, "after"),
        ("/v1/audit", {"after": ""}, "after"),
    ],
)
def test_odd_query_parameters_are_400_naming_the_parameter(
    gateway: Replica, path: str, params: dict[str, str], named: str
) -> None:
    response = httpx.get(f"{gateway.url}{path}", params=params)
    assert response.status_code == 400, response.text
    error = response.json()["error"]
    assert error["code"] == "invalid_request" and error["message"].startswith(f"{named}:")


def test_plain_audit_times_and_ids_still_work(gateway: Replica) -> None:
    params = {"since": "0", "until": "99999999999.5", "limit": "0007"}
    assert httpx.get(f"{gateway.url}/v1/audit", params=params).status_code == 200
    after = httpx.get(f"{gateway.url}/v1/audit", params={"after": "0-0"})
    assert after.status_code == 200


@pytest.mark.parametrize(
    ("path", "content"),
    [
        ("/v1/chat/completions", f'{{"messages": [{{"role": "user", "content": "x"}}], '
                                 f'"max_tokens": {HUGE}}}'),
        ("/v1/chat/completions", '{"messages": [{"role": "user", "content": "x"}], '
                                 '"seed": 1000000000000000000000000000000}'),
        ("/v1/chat/completions", f'{{"messages": [{{"role": "user", "content": {HUGE}}}]}}'),
        ("/v1/approvals/as_missing/decision", f'{{"decision": "approve", "reason": {HUGE}}}'),
        ("/v1/chat/completion", f'{{"messages": [{{"role": "user", "content": "x"}}], '
                                f'"max_tokens": {HUGE}}}'),
        ("/v1/chat/approve", f'{{"sessionid": "as_missing", "approved": {HUGE}}}'),
    ],
)  # fmt: skip
def test_huge_integers_in_json_bodies_are_400(gateway: Replica, path: str, content: str) -> None:
    response = httpx.post(
        f"{gateway.url}{path}", content=content, headers={"content-type": "application/json"}
    )
    assert response.status_code == 400, response.text
    body = response.json()
    code = body["code"] if path in ("/v1/chat/completion", "/v1/chat/approve") else None
    assert (code or body["error"]["code"]) == "invalid_request"


def test_a_23_digit_last_event_id_is_400_not_a_cut_stream(gateway: Replica) -> None:
    held = HeldStream(gateway.url, "use getStringLength on 'resume me'")
    session_id = held.wait_pending()["id"]
    url = f"{gateway.url}/v1/approvals/{session_id}/stream"
    try:
        for headers, params in [
            ({"Last-Event-ID": "1" * 23}, {}),
            ({"Last-Event-ID": HUGE}, {}),
            ({"Last-Event-ID": "-1"}, {}),
            ({}, {"last_event_id": "²"}),
        ]:
            response = httpx.get(url, headers=headers, params=params)
            assert response.status_code == 400, response.text
            error = response.json()["error"]
            assert error["code"] == "invalid_request"
            assert error["message"].startswith("Last-Event-ID:")
    finally:
        assert decide(gateway.url, session_id, "reject").status_code == 200
        held.wait()


def test_reattaching_past_the_end_of_a_finished_run_gets_done_alone(gateway: Replica) -> None:
    held = HeldStream(gateway.url, "use getStringLength on 'over'")
    session_id = held.wait_pending()["id"]
    assert decide(gateway.url, session_id, "reject").status_code == 200
    held.wait()
    wait_lease_released(gateway.stack, session_id)  # given back once the run has ended
    headers = {"Last-Event-ID": str(2**63 - 1)}
    response = httpx.get(f"{gateway.url}/v1/approvals/{session_id}/stream", headers=headers)
    assert response.status_code == 200
    assert response.text == "data: [DONE]\n\n"


def test_a_body_not_declared_json_is_415_and_changes_nothing(gateway: Replica) -> None:
    held = HeldStream(gateway.url, "use getStringLength on 'csrf'")
    session_id = held.wait_pending()["id"]
    decision = json.dumps({"decision": "approve"})
    chat = json.dumps({"messages": [{"role": "user", "content": "hi"}]})
    posts = [
        (f"/v1/approvals/{session_id}/decision", decision),
        ("/v1/chat/approve", json.dumps({"sessionid": session_id, "approved": True})),
        ("/v1/chat/completions", chat),
        ("/v1/chat/completion", chat),
    ]
    try:
        for path, content in posts:
            for content_type in ("text/plain", "application/x-www-form-urlencoded", None):
                headers = {"content-type": content_type} if content_type else {}
                response = httpx.post(f"{gateway.url}{path}", content=content, headers=headers)
                assert response.status_code == 415, response.text
                body = response.json()
                legacy = path in ("/v1/chat/completion", "/v1/chat/approve")
                assert (body["code"] if legacy else body["error"]["code"]) == (
                    "unsupported_media_type"
                )
        session = httpx.get(f"{gateway.url}/v1/approvals/{session_id}").json()
        assert session["status"] == "pending"
        assert all(call["status"] == "pending" for call in session["tool_calls"])
        declared = {"content-type": "Application/JSON; charset=utf-8"}
        url = f"{gateway.url}/v1/approvals/{session_id}/decision"
        assert httpx.post(url, content=decision, headers=declared).status_code == 200
    finally:
        held.wait()


@pytest.mark.parametrize("path", ["/healthz", "/readyz", "/health", "/v1/approvals"])
def test_an_open_gateway_refuses_foreign_host_headers(gateway: Replica, path: str) -> None:
    for host in ("evil.example", "evil.example:8000", "127.0.0.1.evil.example", "10.0.0.7"):
        response = httpx.get(f"{gateway.url}{path}", headers={"Host": host})
        assert response.status_code == 400, host
        assert response.json()["error"]["code"] == "invalid_host"
    for host in ("localhost", f"localhost:{gateway.port}", "127.0.0.1", "[::1]:9", "127.0.0.2"):
        response = httpx.get(f"{gateway.url}{path}", headers={"Host": host})
        assert response.status_code == 200, host


def test_allowed_hosts_are_the_only_hosts_served(make_stack: StackFactory) -> None:
    hosts = '["127.0.0.1", "gateway.example.com", "*.corp.example", "localhost:1234"]'
    replica = make_stack(api_keys=KEYS_SETTING, allowed_hosts=hosts).replicas[0]
    served = [
        "gateway.example.com",
        "GATEWAY.example.com:443",
        "a.b.corp.example",
        "localhost:1234",
    ]
    refused = ["corp.example", "evil.example", "localhost", "localhost:99", "[::1]"]
    for host in served + refused:
        response = httpx.get(f"{replica.url}/healthz", headers={"Host": host})
        if host in served:
            assert response.status_code == 200, host
        else:
            assert response.status_code == 400, host
            assert response.json()["error"]["code"] == "invalid_host"


def test_a_gateway_with_keys_and_no_allowed_hosts_serves_any_host(make_stack: StackFactory) -> None:
    replica = make_stack(api_keys=KEYS_SETTING).replicas[0]
    response = httpx.get(f"{replica.url}/healthz", headers={"Host": "gateway.example.com"})
    assert response.status_code == 200


def test_an_open_gateway_refuses_to_listen_beyond_loopback(make_stack: StackFactory) -> None:
    stack = make_stack(replicas=0, workers=0)
    refused = listen_on_every_interface(stack, {})
    assert refused.popen is not None and refused.popen.wait(60) != 0
    message = refused.logs()
    assert "refusing to listen on '0.0.0.0'" in message
    assert "GATEWAY_ALLOW_OPEN_BIND" in message and "GATEWAY_API_KEYS" in message
    for told in ({"GATEWAY_ALLOW_OPEN_BIND": "true"}, {"GATEWAY_API_KEYS": KEYS_SETTING}):
        served = listen_on_every_interface(stack, told)
        try:
            wait_http(f"http://127.0.0.1:{served.argv[-1]}/healthz", served)
        finally:
            served.stop()


def listen_on_every_interface(stack: Stack, settings: dict[str, str]) -> Process:
    """`python -m gateway --host 0.0.0.0` with the stack's settings and these, started."""
    port = str(free_port())
    argv = python_module("gateway", "--host", "0.0.0.0", "--port", port)
    process = Process(f"gateway-any-{port}", argv, {**stack.env(), **settings}, stack.log_dir)
    process.start()
    return process


def test_an_unexpected_error_is_a_json_500(gateway: Replica) -> None:
    # A session record a bug (or a hand) corrupted: reading it raises deep in the store.
    redis = gateway.stack.redis.client()
    key = Keys(gateway.stack.prefix).session("as_corrupted")
    redis.hset(key, "unrelated", "1")
    try:
        for path in ("/v1/approvals/as_corrupted", "/v1/approvals/as_corrupted/stream"):
            response = httpx.get(f"{gateway.url}{path}")
            assert response.status_code == 500
            assert response.json()["error"]["code"] == "internal_error"
    finally:
        redis.delete(key)
