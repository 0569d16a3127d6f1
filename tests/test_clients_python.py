"""Python clients people use, held for a person who takes their time: the openai SDK (sync,
async, the `.stream()` helper, not streamed), LangChain's `ChatOpenAI`, the `llm` CLI, and a
raw httpx reader that counts the heartbeats the others skip.

Each request waits on its approval longer than two heartbeats at the default interval,
then is approved or rejected; every client must hand its caller the model's answer. The
holds run at once on one stack, alongside the retry stories (an SDK retrying a held
non-streamed request opens one approval), so the module takes about a minute."""

from __future__ import annotations

import secrets
import time
from typing import Any

import httpx
import pytest

from tests.client_support import (
    Client,
    HeldClient,
    RetriedRequest,
    Target,
    httpx_sse,
    langchain_invoke,
    langchain_stream,
    listed,
    llm_cli,
    sdk_async_streamed,
    sdk_stream_helper,
    sdk_sync_not_streamed,
    sdk_sync_streamed,
)
from tests.clients import consume, decide, sdk, user
from tests.conftest import Stack

HOLD_S = 41.0
"""Longer than two heartbeats at the default 15 s interval."""
REASON = "not while the tests watch"
APPROVED_ANSWER = "getStringLength returned 5."

CLIENTS: dict[str, Client] = {
    # The CLI first: its processes take seconds to start.
    "llm-cli-stream": llm_cli(),
    "llm-cli-no-stream": llm_cli("--no-stream"),
    "openai-sync-stream": sdk_sync_streamed,
    "openai-sync": sdk_sync_not_streamed,
    "openai-async-stream": sdk_async_streamed,
    "openai-stream-helper": sdk_stream_helper,
    "langchain-invoke": langchain_invoke,
    "langchain-stream": langchain_stream,
    "httpx-sse": httpx_sse,
}
STREAMS_EXTRAS = {"openai-sync-stream", "openai-async-stream", "openai-stream-helper", "httpx-sse"}
"""Clients that show the stream's `approval` and `tool_event` chunks to their caller."""
DECISIONS = ("approve", "reject")


@pytest.fixture(scope="module")
def base_url(shared_stack: Stack) -> str:
    """One replica with default settings: heartbeats every 15 s."""
    assert "GATEWAY_HEARTBEAT_INTERVAL_S" not in shared_stack.env()
    return shared_stack.replicas[0].url


RETRY_HOLD_S = 12.0
"""Long enough for the SDK (timeout 3 s) to send at least three attempts."""
RETRIED = {
    "sdk-retries": ("use getStringLength on 'retried'", {}),
    "idempotency-key": (
        "use getStringLength on 'idempotent'",
        {"Idempotency-Key": f"key-{secrets.token_hex(8)}"},
    ),
}
RETRIED_ANSWERS = {
    "sdk-retries": "getStringLength returned 7.",
    "idempotency-key": "getStringLength returned 10.",
}


@pytest.fixture(scope="module")
def retried(base_url: str, tmp_path_factory: pytest.TempPathFactory) -> dict[str, RetriedRequest]:
    """Both retry variants, started and approved after `RETRY_HOLD_S`; not waited for."""
    workdir = tmp_path_factory.mktemp("retries")
    run_id = secrets.token_hex(4)
    requests = {
        name: RetriedRequest(Target(base_url, f"{name}-{run_id}", workdir), prompt, headers)
        for name, (prompt, headers) in RETRIED.items()
    }
    for request in requests.values():
        request.start(RETRY_HOLD_S)
    return requests


@pytest.fixture(scope="module")
def held(
    base_url: str, retried: dict[str, RetriedRequest], tmp_path_factory: pytest.TempPathFactory
) -> dict[tuple[str, str], HeldClient]:
    """Every client and decision, started at once, each decided `HOLD_S` after its approval
    opened, then read to its end. (The retry stories run meanwhile: `retried` comes first.)"""
    workdir = tmp_path_factory.mktemp("clients")
    run_id = secrets.token_hex(4)
    runs = {
        (name, decision): HeldClient(
            client=client,
            target=Target(base_url, f"{name}-{decision}-{run_id}", workdir),
            decision_kind=decision,
            reason=REASON if decision == "reject" else "",
        )
        for name, client in CLIENTS.items()
        for decision in DECISIONS
    }
    for run in runs.values():
        run.start()
    for run in runs.values():
        run.find_pending()
    for run in sorted(runs.values(), key=lambda r: r.listed[0]["created_at"] if r.listed else 0):
        run.decide_after(HOLD_S)
    for run in runs.values():
        run.join(timeout=60)
    return runs


def stored(base_url: str, session_id: str) -> dict[str, Any]:
    response = httpx.get(f"{base_url}/v1/approvals/{session_id}", timeout=10)
    response.raise_for_status()
    session: dict[str, Any] = response.json()
    return session


def found_and_held(run: HeldClient) -> dict[str, Any]:
    """The one session the client's label found, held `HOLD_S` before the decision."""
    assert len(run.listed) == 1, f"sessions under {run.target.label}: {run.listed} ({run.error!r})"
    assert run.held_s >= HOLD_S and run.decision_status == 200
    session = run.listed[0]
    assert session["conversation_label"] == run.target.label
    [call] = session["tool_calls"]
    assert call["name"] == "getStringLength" and call["arguments"] == {"text": "hello"}
    return session


@pytest.mark.parametrize("client", CLIENTS)
def test_approved_after_a_long_hold_the_client_gets_the_answer(
    held: dict[tuple[str, str], HeldClient], base_url: str, client: str
) -> None:
    run = held[client, "approve"]
    session = found_and_held(run)
    outcome = run.got()

    assert outcome.text == APPROVED_ANSWER
    after = stored(base_url, session["id"])
    assert after["status"] == "completed" and after["tool_calls"][0]["status"] == "succeeded"
    if client in STREAMS_EXTRAS:
        assert outcome.approvals is not None and outcome.tool_events is not None
        assert [a["id"] for a in outcome.approvals] == [session["id"]]
        assert [e["type"] for e in outcome.tool_events] == ["executing", "result"]
        assert outcome.tool_events[1]["content"] == "5"


@pytest.mark.parametrize("client", CLIENTS)
def test_rejected_after_a_long_hold_the_client_hears_the_reason(
    held: dict[tuple[str, str], HeldClient], base_url: str, client: str
) -> None:
    run = held[client, "reject"]
    session = found_and_held(run)
    outcome = run.got()

    assert "rejected" in outcome.text and REASON in outcome.text
    after = stored(base_url, session["id"])
    assert after["tool_calls"][0]["status"] == "rejected"
    assert after["tool_calls"][0]["result"] is None
    if client in STREAMS_EXTRAS:
        assert outcome.approvals is not None and outcome.tool_events is not None
        assert [a["id"] for a in outcome.approvals] == [session["id"]]
        [rejected] = outcome.tool_events
        assert rejected["type"] == "rejected" and rejected["reason"] == REASON


@pytest.mark.parametrize("decision", DECISIONS)
def test_every_hold_lasted_longer_than_two_heartbeats(
    held: dict[tuple[str, str], HeldClient], decision: str
) -> None:
    # A raw reader sees the comment lines the SDKs skip: the holds really spanned them.
    heartbeats = held["httpx-sse", decision].got().heartbeats
    assert heartbeats is not None and heartbeats >= 2


def test_a_non_streamed_answer_carries_the_decided_session(
    held: dict[tuple[str, str], HeldClient],
) -> None:
    approved = held["openai-sync", "approve"].got().approvals
    rejected = held["openai-sync", "reject"].got().approvals
    assert approved is not None and rejected is not None
    [approved_session], [rejected_session] = approved, rejected
    assert approved_session["id"] == held["openai-sync", "approve"].listed[0]["id"]
    assert approved_session["status"] == "completed"
    assert approved_session["tool_calls"][0]["decision"]["decision"] == "approve"
    assert rejected_session["tool_calls"][0]["decision"]["reason"] == REASON


def audited(base_url: str, event: str, request: RetriedRequest) -> list[str]:
    """The session of each `event` audit entry about the request's label, oldest first."""
    params = {"event": event, "since": f"{request.started_at:.3f}", "limit": "1000"}
    response = httpx.get(f"{base_url}/v1/audit", params=params, timeout=10)
    response.raise_for_status()
    sessions = [entry["session"] for entry in response.json()["data"]]
    label = request.target.label
    return [s for s in sessions if stored(base_url, s)["conversation_label"] == label]


@pytest.mark.parametrize("variant", RETRIED)
def test_a_retried_request_opens_one_approval_and_runs_the_tool_once(
    retried: dict[str, RetriedRequest], base_url: str, variant: str
) -> None:
    request = retried[variant]
    completion = request.wait()

    assert len(request.attempts) >= 3, f"the SDK did not retry: {request.attempts}"
    assert request.attempts[:3] == ["0", "1", "2"]
    pending = request.listings[-1]
    assert len(pending) == 1
    # Never a second session while the SDK retried: each listing shows none yet, or this one.
    assert {tuple(ids) for ids in request.listings} <= {(), tuple(pending)}
    assert completion.choices[0].message.content == RETRIED_ANSWERS[variant]
    assert audited(base_url, "requested", request) == pending
    # The worker audits a run just after storing its result, which the answer follows.
    deadline = time.monotonic() + 5
    while not (executed := audited(base_url, "executed", request)) and time.monotonic() < deadline:
        time.sleep(0.1)
    assert executed == pending


def test_the_request_id_is_echoed_and_finds_the_held_session(base_url: str) -> None:
    request_id = f"req-clients-{secrets.token_hex(6)}"
    client = sdk(base_url, headers={"X-Request-Id": request_id})
    raw = client.chat.completions.with_raw_response.create(
        model="offline-model", messages=user("use getStringLength on 'echo'"), stream=True
    )
    assert raw.headers["x-request-id"] == request_id
    assert raw.headers["x-conversation-id"].startswith("conv_")

    def approve_mine(approval: dict[str, Any]) -> None:
        [session] = listed(base_url, request_id=request_id)
        assert session["id"] == approval["id"] and session["request_id"] == request_id
        decide(base_url, session["id"], "approve").raise_for_status()

    seen = consume(raw.parse(), on_approval=approve_mine)
    assert seen.text == "getStringLength returned 4."
    assert listed(base_url, request_id=request_id) == []
    generated = httpx.get(f"{base_url}/v1/approvals", timeout=10).headers["x-request-id"]
    assert generated.startswith("req_")
