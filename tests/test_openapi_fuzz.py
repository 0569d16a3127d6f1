"""Schemathesis against a real replica, from the document the gateway builds.

One replica with a worker, Redis and the offline model, and one API key that both chats and
decides (self-approval allowed, so a decision can succeed). Every operation of
`/openapi.json` gets generated requests, valid and invalid (schemathesis' coverage and
fuzzing phases), and every answer must be below 500 and conform to the document: a
documented status, a documented content type and headers, a body (every event of an event
stream too) that fits its schema, invalid data refused, a 401 without the key where the
document asks for one, and a 405 with `Allow` for a method the path does not take.

Streams end within the run: approvals time out after 10 s, so a chat held for a decision
ends, and a re-attached one with it. The approvals feed never ends by design: schemathesis
reads it up to its first event (`ready`) and stops (`max-stream-events`);
tests/test_fuzz_http.py fuzzes it by hand the same way. The first version's two POSTs read
their bodies leniently, as that version did (`"0.5"` for 0.5; their document says so), so
there invalid data need not be refused; every other check holds for them too.

A second test drives one approval's whole story (held stream, read, list with context,
decide, re-attach, audit) through the same checks, so the schemas of real sessions, not
only of errors, are held to the document.

The document is the one `create_app` builds, loaded with the module (schemathesis makes one
test per operation from it); tests/test_openapi.py checks that a replica serves exactly it.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Any

import httpx
import orjson
import pytest
import schemathesis
from hypothesis import HealthCheck, settings
from schemathesis import Case
from schemathesis.checks import CheckFunction, not_a_server_error
from schemathesis.specs.openapi.checks import (
    content_type_conformance,
    ignored_auth,
    negative_data_rejection,
    response_headers_conformance,
    response_schema_conformance,
    status_code_conformance,
    unsupported_method,
)

from core.settings import Settings
from gateway.app import create_app
from gateway.auth import hash_key
from gateway.routes import LEGACY_PATHS
from tests.clients import HeldStream
from tests.conftest import Replica, Stack
from tests.processes import RedisServer

KEY = "key-fuzz"
FEED = "/v1/approvals/events"
MAX_EXAMPLES = 50
"""Generated requests per operation (after the coverage phase's own): the file's bound."""
CHECKS: list[CheckFunction] = [
    not_a_server_error,
    status_code_conformance,
    content_type_conformance,
    response_headers_conformance,
    response_schema_conformance,
    negative_data_rejection,
    ignored_auth,
    unsupported_method,
]
LENIENT_CHECKS = [check for check in CHECKS if check is not negative_data_rejection]
"""For the first version's bodies (see the module doc)."""
CONFIG = {
    "auth": {"openapi": {"apiKey": {"bearer": KEY}}},
    "request-timeout": 30,
    "operations": [{"include-path": FEED, "max-stream-events": 1}],
}


def api_keys_setting() -> str:
    keys = [
        {
            "sha256": hash_key(KEY),
            "name": "fuzz",
            "tenant": "acme",
            "roles": ["requester", "approver"],
        }
    ]
    return orjson.dumps(keys).decode()


@pytest.fixture(scope="module")
def fuzzed(
    redis_server: RedisServer, offline_model: str, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Replica]:
    """A keyed replica and a worker; approvals time out after 10 s."""
    overrides = {
        "GATEWAY_API_KEYS": api_keys_setting(),
        "GATEWAY_ALLOW_SELF_APPROVAL": "1",
        "GATEWAY_APPROVAL_TIMEOUT_S": "10",
        "GATEWAY_HEARTBEAT_INTERVAL_S": "1",
    }
    workdir = tmp_path_factory.mktemp("openapi-fuzz")
    stack = Stack(redis_server, offline_model, workdir, "oafuzz", overrides)
    stack.add_worker()
    yield stack.add_replica()
    stack.stop()


api = schemathesis.openapi.from_dict(
    orjson.loads(create_app(Settings()).state.openapi), config=schemathesis.Config.from_dict(CONFIG)
)


@api.parametrize()
@settings(
    max_examples=MAX_EXAMPLES,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.filter_too_much],
)
def test_every_operation_answers_below_500_as_documented(case: Case[Any], fuzzed: Replica) -> None:
    checks = LENIENT_CHECKS if case.operation.path in LEGACY_PATHS else CHECKS
    case.call_and_validate(base_url=fuzzed.url, checks=checks)


def test_an_approvals_whole_story_conforms_to_the_document(fuzzed: Replica) -> None:
    held = HeldStream(fuzzed.url, "use getStringLength on 'story'", api_key=KEY)
    session_id = held.wait_pending()["id"]
    call = _caller(fuzzed.url)
    call("GET", "/v1/approvals/{session_id}", path_parameters={"session_id": session_id})
    listed = call("GET", "/v1/approvals", query={"include": "context"})
    assert session_id in {s["id"] for s in listed["data"]}
    decided = call(
        "POST",
        "/v1/approvals/{session_id}/decision",
        path_parameters={"session_id": session_id},
        body={"decision": "approve", "reason": "story"},
    )
    assert decided["status"] in ("approved", "running", "completed")
    assert held.wait().finish_reason == "stop"
    call("GET", "/v1/approvals/{session_id}/stream", path_parameters={"session_id": session_id})
    entries = call("GET", "/v1/audit", query={"session": session_id})
    assert {"requested", "decided", "executed"} <= {e["event"] for e in entries["data"]}
    call("GET", "/v1/me")
    call("GET", "/v1/models")


def _caller(base_url: str) -> Callable[..., Any]:
    """Calls one operation with the key, validates the answer, returns its JSON (if any)."""

    def call(method: str, path: str, **given: Any) -> Any:
        case = api[path][method].Case(headers={"Authorization": f"Bearer {KEY}"}, **given)
        response = case.call_and_validate(base_url=base_url, checks=CHECKS)
        assert response.status_code == 200, response.text[:500]
        if "json" in response.headers.get("content-type", [""])[0]:
            return response.json()
        return None

    return call


def test_the_feed_opens_with_a_documented_ready_event(fuzzed: Replica) -> None:
    """The feed does not end: read its first event only, through the same checks."""
    case = api[FEED]["GET"].Case(headers={"Authorization": f"Bearer {KEY}"})
    response = case.call_and_validate(base_url=fuzzed.url, checks=CHECKS)
    assert response.status_code == 200
    assert b"event: ready" in response.content
    with httpx.stream("GET", f"{fuzzed.url}{FEED}", headers={"Authorization": "Bearer x"}) as bad:
        assert bad.status_code == 401
