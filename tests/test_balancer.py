"""nginx in front of three replicas: a steady rain of bad requests costs valid clients nothing.

Through the shipped load balancer (deploy/nginx.conf rendered for local ports), one thread
sends bad requests at `BAD_PER_S` for `RUN_S` seconds: invalid JSON, wrong types, unknown
routes, wrong methods, bad keys, and headers, URLs and bodies too large for nginx itself.
Meanwhile valid clients chat (a plain answer, a tool run, a call held for approval and
decided), list models and list approvals. Mixed in are requests that hit a bug (a
corrupted session record raises deep in the store): a replica used to close its
keep-alive connection after such a 500, and nginx's next request on that connection
failed, a POST with a 502 and the replica counted down.

Every valid request must succeed (200, every stream ending with `data: [DONE]`); every
bad one must get its 4xx JSON error in the gateway's shape, whoever answered it (and one
that hits the bug its JSON 500); and nginx must have seen no replica fail.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field

import httpx
import orjson
import pytest

from core.keys import Keys
from gateway.auth import hash_key
from tests.conftest import Stack, StackFactory

KEYS_SETTING = orjson.dumps(
    [
        {"sha256": hash_key("key-agent"), "name": "agent", "tenant": "ops", "roles": ["admin"]},
        {"sha256": hash_key("key-human"), "name": "human", "tenant": "ops", "roles": ["admin"]},
    ]
).decode()
AUTH = {"Authorization": "Bearer key-agent"}
APPROVER = {"Authorization": "Bearer key-human"}
"""The key that decides: not the one that asked (no self-approval)."""
JSON = {"Content-Type": "application/json"}
RUN_S = 12.0
BAD_PER_S = 10.0
CORRUPTED = "as_corrupted"
"""A session id whose record is corrupted: reading it is an unexpected error (a JSON 500)."""


@dataclass(frozen=True)
class Bad:
    """One kind of bad request and the JSON error it must get."""

    method: str
    path: str
    status: int
    code: str
    content: bytes = b""
    headers: dict[str, str] = field(default_factory=lambda: {**AUTH, **JSON})


BAD_REQUESTS = [
    Bad("POST", "/v1/chat/completions", 400, "invalid_request", b"{not json"),
    Bad("POST", "/v1/chat/completions", 400, "invalid_request", b'{"messages": "hi"}'),
    Bad("POST", "/v1/chat/completions", 400, "invalid_request", b'{"messages": [{"role": 7}]}'),
    Bad("POST", "/v1/approvals/as_missing/decision", 400, "invalid_request", b'{"decision": 5}'),
    Bad("GET", "/v1/nothing-here", 404, "not_found"),
    Bad("GET", f"/v1/approvals/as_{'0' * 32}", 404, "session_not_found"),
    Bad("GET", "/v1/chat/completions", 405, "method_not_allowed"),
    Bad("DELETE", "/v1/approvals", 405, "method_not_allowed"),
    Bad("GET", "/v1/approvals", 401, "unauthorized", headers={}),
    Bad("GET", "/v1/models", 401, "unauthorized", headers={"Authorization": "Bearer wrong"}),
    Bad("POST", "/v1/chat/completions", 415, "unsupported_media_type", b"{}", headers=AUTH),
    # Refused by nginx itself: a header line over 8 KiB, a URL over 8 KiB, a body over 2 MiB.
    Bad("GET", "/v1/models", 400, "invalid_request", headers={**AUTH, "X-Huge": "h" * 65536}),
    Bad("GET", f"/v1/models?q={'q' * 16384}", 414, "invalid_request"),
    Bad("POST", "/v1/chat/completions", 413, "body_too_large", b"x" * (3 << 20)),
    # Over the replica's own limit (1 MiB) but within nginx's.
    Bad("POST", "/v1/chat/completions", 413, "body_too_large", b"x" * (3 << 19)),
    # Hits a bug: the JSON 500, on a connection that stays open for the next request.
    Bad("GET", f"/v1/approvals/{CORRUPTED}", 500, "internal_error"),
]


@dataclass
class Outcomes:
    """What the clients saw, by kind of request; failures with what went wrong."""

    done: dict[str, int] = field(default_factory=dict)
    failures: list[str] = field(default_factory=list)
    lock: threading.Lock = field(default_factory=threading.Lock)

    def record(self, kind: str, failure: str | None) -> None:
        with self.lock:
            self.done[kind] = self.done.get(kind, 0) + 1
            if failure is not None:
                self.failures.append(f"{kind}: {failure}")


def bad_requests(url: str, outcomes: Outcomes) -> None:
    """Send `BAD_PER_S` bad requests a second for `RUN_S` seconds, each kind in turn."""
    started = time.monotonic()
    with httpx.Client(base_url=url, timeout=30) as client:
        for index in range(int(RUN_S * BAD_PER_S)):
            time.sleep(max(0.0, started + index / BAD_PER_S - time.monotonic()))
            bad = BAD_REQUESTS[index % len(BAD_REQUESTS)]
            try:
                response = client.request(
                    bad.method, bad.path, content=bad.content, headers=bad.headers
                )
                outcomes.record("bad", refused_as(bad, response))
            except httpx.HTTPError as error:
                outcomes.record("bad", f"{bad.path[:40]}: {error!r}")


def refused_as(bad: Bad, response: httpx.Response) -> str | None:
    """What is wrong with the answer to a bad request; None when it is the right error."""
    try:
        error = response.json()["error"]
    except (ValueError, KeyError, TypeError):
        return f"{bad.path[:40]} got {response.status_code} {response.text[:80]!r}"
    if response.status_code != bad.status or error["code"] != bad.code:
        return f"{bad.path[:40]} got {response.status_code} {error['code']}, not {bad.status}"
    return None


def chat(client: httpx.Client, prompt: str, held: bool = False) -> str | None:
    """A streamed chat to its end, deciding (reject) the call held for approval if `held`."""
    body = {
        "model": "offline-model",
        "stream": True,
        "messages": [{"role": "user", "content": prompt}],
    }
    with client.stream("POST", "/v1/chat/completions", json=body) as response:
        if response.status_code != 200:
            return f"{response.status_code} {response.read()[:200]!r}"
        last, decided = "", False
        for line in response.iter_lines():
            if not line.startswith("data: "):
                continue
            last = line[len("data: ") :]
            if '"approval"' in last and orjson.loads(last)["approval"]["status"] == "pending":
                failure = reject(client, orjson.loads(last)["approval"]["id"])
                if failure:
                    return failure
                decided = True
    if held and not decided:
        return "never held for approval"
    return None if last == "[DONE]" else f"ended with {last[:200]!r}"


def reject(client: httpx.Client, session_id: str) -> str | None:
    decision = {"decision": "reject", "reason": "not during the test"}
    path = f"/v1/approvals/{session_id}/decision"
    response = client.post(path, json=decision, headers=APPROVER)
    return None if response.status_code == 200 else f"decision {response.status_code}"


def listing(path: str) -> Callable[[httpx.Client], str | None]:
    def get(client: httpx.Client) -> str | None:
        response = client.get(path)
        return None if response.status_code == 200 else f"{response.status_code} {response.text}"

    return get


VALID: dict[str, Callable[[httpx.Client], str | None]] = {
    "chat": lambda client: chat(client, "hi"),
    "chat with a tool": lambda client: chat(client, "lookupCapital of 'France'"),
    "chat held and decided": lambda client: chat(client, "explode with 'x'", held=True),
    "list models": listing("/v1/models"),
    "list approvals": listing("/v1/approvals"),
}


def valid_client(url: str, kinds: list[str], stop: threading.Event, outcomes: Outcomes) -> None:
    """Run `kinds` of valid requests in turn on one keep-alive client until `stop`."""
    with httpx.Client(base_url=url, headers=AUTH, timeout=30) as client:
        index = 0
        while not stop.is_set():
            kind = kinds[index % len(kinds)]
            index += 1
            try:
                outcomes.record(kind, VALID[kind](client))
            except httpx.HTTPError as error:
                outcomes.record(kind, repr(error))


@pytest.fixture
def balanced(make_stack: StackFactory) -> Iterator[tuple[Stack, str]]:
    """3 replicas with API keys, 2 workers, nginx; a session record corrupted on purpose."""
    stack = make_stack(replicas=3, workers=2, api_keys=KEYS_SETTING)
    balancer = stack.add_nginx()
    redis = stack.redis.client()
    redis.hset(Keys(stack.prefix).session(CORRUPTED), "unrelated", "1")
    yield stack, balancer
    redis.delete(Keys(stack.prefix).session(CORRUPTED))


def test_bad_requests_at_a_steady_rate_cost_valid_clients_nothing(
    balanced: tuple[Stack, str],
) -> None:
    stack, url = balanced
    outcomes = Outcomes()
    stop = threading.Event()
    mixes = [["chat", "list models"], ["chat with a tool", "list approvals"]]
    mixes += [["chat held and decided", "chat"], ["list models", "list approvals"]]
    clients = [
        threading.Thread(target=valid_client, args=(url, kinds, stop, outcomes)) for kinds in mixes
    ]
    for thread in clients:
        thread.start()
    try:
        bad_requests(url, outcomes)
    finally:
        stop.set()
        for thread in clients:
            thread.join(60)

    assert outcomes.failures == [], "\n".join(outcomes.failures[:20])
    assert outcomes.done["bad"] == int(RUN_S * BAD_PER_S)
    for kind in VALID:
        assert outcomes.done.get(kind, 0) >= 5, outcomes.done
    # Nor did nginx see a replica fail: no connection reset or closed under a request.
    [balancer] = stack.balancers
    errors = (balancer.log_path.parent / "nginx-error.log").read_text()
    assert "from upstream" not in errors, errors[-3000:]
