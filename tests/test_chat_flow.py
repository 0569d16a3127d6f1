"""The approval loop end to end through the official openai SDK: real replica, worker, Redis."""

from __future__ import annotations

import threading
import time
from typing import Any

import httpx
import pytest

from tests.clients import consume, decide, sdk, sse_data, stream_chat, user
from tests.conftest import Replica, StackFactory
from tests.mediation import wait_for
from tests.redis_state import consumer_of, job_settled, jobs_of

STRING_LENGTH_AB = "Please use getStringLength on 'ab'"


def test_plain_chat_streams_the_model_reply_with_usage(gateway: Replica) -> None:
    stream = sdk(gateway.url).chat.completions.create(
        model="offline-model",
        messages=user("hello gateway"),
        stream=True,
        stream_options={"include_usage": True},
    )
    seen = consume(stream)
    assert seen.text.startswith("Offline model reply to: hello gateway")
    assert seen.finish_reason == "stop"
    assert seen.approvals == [] and seen.tool_events == []
    assert seen.usage is not None and seen.usage.completion_tokens > 0


def test_plain_chat_without_stream_returns_one_completion(gateway: Replica) -> None:
    completion = sdk(gateway.url).chat.completions.create(
        model="offline-model", messages=user("hello gateway")
    )
    assert completion.object == "chat.completion"
    assert completion.choices[0].message.content is not None
    assert completion.choices[0].message.content.startswith("Offline model reply to: hello")
    assert completion.choices[0].finish_reason == "stop"
    assert (completion.model_extra or {}).get("approval") is None


def test_approved_call_runs_in_the_worker_and_the_model_answers(gateway: Replica) -> None:
    def approve(approval: dict[str, Any]) -> None:
        assert decide(gateway.url, approval["id"], "approve").status_code == 200

    stream = stream_chat(gateway.url, STRING_LENGTH_AB)
    seen = consume(stream, on_approval=approve)

    [notice] = seen.approvals
    assert notice["object"] == "approval_session" and notice["status"] == "pending"
    [call] = notice["tool_calls"]
    assert call["name"] == "getStringLength" and call["arguments"] == {"text": "ab"}
    assert call["policy"] == "ask" and len(call["arguments_sha256"]) == 64
    assert [e["type"] for e in seen.tool_events] == ["executing", "result"]
    assert seen.events_of("result")[0]["content"] == "2"
    assert seen.text == "getStringLength returned 2."
    assert seen.finish_reason == "stop"
    stored = httpx.get(f"{gateway.url}/v1/approvals/{notice['id']}").json()
    assert stored["status"] == "completed"
    assert stored["tool_calls"][0]["status"] == "succeeded"
    # The worker process ran it: its result names the stack's one worker, which took the
    # call's one job from the stream and acknowledged it.
    [worker] = gateway.stack.workers
    assert stored["tool_calls"][0]["result"]["worker"] == consumer_of(worker)
    [(entry_id, job)] = jobs_of(gateway.stack, notice["id"])
    assert job["tool_call_id"] == call["id"] and job["tool"] == "getStringLength"
    assert wait_for(lambda: job_settled(gateway.stack, entry_id)), "the job was not acknowledged"


def test_rejected_call_never_runs_and_the_model_hears_the_reason(gateway: Replica) -> None:
    def reject(approval: dict[str, Any]) -> None:
        response = decide(gateway.url, approval["id"], "reject", "not on a Friday")
        assert response.status_code == 200
        assert response.json()["status"] == "rejected"

    stream = stream_chat(gateway.url, STRING_LENGTH_AB)
    seen = consume(stream, on_approval=reject)

    [rejected] = seen.tool_events
    assert rejected["type"] == "rejected" and rejected["reason"] == "not on a Friday"
    assert rejected["by"] == "approver"
    assert "not on a Friday" in seen.text and "rejected" in seen.text
    stored = httpx.get(f"{gateway.url}/v1/approvals/{seen.approvals[0]['id']}").json()
    assert stored["tool_calls"][0]["status"] == "rejected"
    assert stored["tool_calls"][0]["result"] is None


def test_parallel_calls_share_one_session_and_each_gets_its_result(gateway: Replica) -> None:
    prompt = "use getStringLength on 'ab' and getStringLength on 'abc'"
    stream = stream_chat(gateway.url, prompt)
    seen = consume(stream, lambda a: decide(gateway.url, a["id"], "approve").raise_for_status())

    [notice] = seen.approvals
    assert [c["arguments"]["text"] for c in notice["tool_calls"]] == ["ab", "abc"]
    assert sorted(e["content"] for e in seen.events_of("result")) == ["2", "3"]
    assert seen.text == "getStringLength returned 2 and getStringLength returned 3."


def test_auto_policy_runs_without_asking(gateway: Replica) -> None:
    stream = stream_chat(gateway.url, "lookupCapital of 'Kenya' please")
    seen = consume(stream)
    assert seen.approvals == []
    assert [e["type"] for e in seen.tool_events] == ["executing", "result"]
    assert seen.text == "lookupCapital returned Nairobi."


def test_deny_policy_never_runs_and_the_model_is_told(gateway: Replica) -> None:
    stream = stream_chat(gateway.url, "run forbiddenTool on 'prod'")
    seen = consume(stream)
    assert seen.approvals == []
    [denied] = seen.tool_events
    assert denied["type"] == "rejected" and denied["by"] == "policy"
    assert "not run. Reason: policy: forbiddenTool is denied." in seen.text


def test_tool_error_becomes_a_result_the_model_sees(gateway: Replica) -> None:
    stream = stream_chat(gateway.url, "explode with 'disk full'")
    seen = consume(stream, lambda a: decide(gateway.url, a["id"], "approve").raise_for_status())
    [error] = seen.events_of("error")
    assert error["content"] == "RuntimeError: exploded: disk full"
    assert "Error: RuntimeError: exploded: disk full" in seen.text
    # The worker survived: the next approved call still runs.
    again = stream_chat(gateway.url, STRING_LENGTH_AB)
    assert consume(again, lambda a: decide(gateway.url, a["id"], "approve")).text.endswith("2.")


def test_non_stream_request_waits_for_the_decision(gateway: Replica) -> None:
    def approve_when_pending() -> None:
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline:
            pending = httpx.get(f"{gateway.url}/v1/approvals").json()["data"]
            mine = [s for s in pending if s["tool_calls"][0]["arguments"] == {"text": "wait"}]
            if mine:
                decide(gateway.url, mine[0]["id"], "approve").raise_for_status()
                return
            time.sleep(0.05)

    approver = threading.Thread(target=approve_when_pending)
    approver.start()
    completion = sdk(gateway.url).chat.completions.create(
        model="offline-model", messages=user("getStringLength of 'wait'")
    )
    approver.join()
    assert completion.choices[0].message.content == "getStringLength returned 4."
    approval = (completion.model_extra or {})["approval"]
    assert approval["status"] == "completed"
    assert approval["tool_calls"][0]["decision"]["decision"] == "approve"


def test_client_tools_policy_allows_pass_through_as_tool_calls(
    make_stack: StackFactory,
) -> None:
    gateway = make_stack(tool_policy='{"getWeather": "auto"}').replicas[0]
    weather = {
        "type": "function",
        "function": {
            "name": "getWeather",
            "description": "Weather in a city.",
            "parameters": {"type": "object", "properties": {"city": {"type": "string"}}},
        },
    }
    seen = consume(stream_chat(gateway.url, "call getWeather for 'Oslo'", tools=[weather]))
    assert seen.finish_reason == "tool_calls"
    assert seen.approvals == []
    [call] = seen.tool_calls
    assert call.function.name == "getWeather" and call.function.arguments == '{"city":"Oslo"}'


def test_held_stream_sends_heartbeats(make_stack: StackFactory) -> None:
    stack = make_stack(heartbeat_interval_s="0.2")
    replica = stack.replicas[0]
    body = {"model": "m", "stream": True, "messages": user(STRING_LENGTH_AB)}
    heartbeats = 0
    with httpx.stream("POST", f"{replica.url}/v1/chat/completions", json=body, timeout=30) as r:
        lines = r.iter_lines()
        for line in lines:
            if '"approval"' in line:
                break
        for line in lines:
            heartbeats += line == ": heartbeat"
            if heartbeats == 3:
                break
    assert heartbeats == 3


def test_expiry_ends_the_stream_and_later_decisions_get_410(make_stack: StackFactory) -> None:
    stack = make_stack(approval_timeout_s="1.5")
    replica = stack.replicas[0]
    started = time.monotonic()
    seen = consume(stream_chat(replica.url, STRING_LENGTH_AB))
    elapsed = time.monotonic() - started
    assert [a["status"] for a in seen.approvals] == ["pending", "expired"]
    assert 1.4 <= elapsed < 5
    assert "before the deadline" in seen.text
    assert seen.tool_events[0]["type"] == "rejected" and seen.tool_events[0]["by"] == "deadline"
    late = decide(replica.url, seen.approvals[0]["id"], "approve")
    assert late.status_code == 410
    assert late.json()["error"]["code"] == "session_expired"


def test_tool_rounds_are_bounded(make_stack: StackFactory) -> None:
    stack = make_stack(max_tool_rounds="1")
    replica = stack.replicas[0]
    body = {"model": "m", "messages": user("lookupCapital of 'Japan'")}
    completion = httpx.post(f"{replica.url}/v1/chat/completions", json=body, timeout=30).json()
    # One tool round ran; the model's next turn is offered no tools and answers.
    assert completion["choices"][0]["message"]["content"] == "lookupCapital returned Tokyo."


def test_raw_stream_is_valid_chunks_with_ids_and_done(gateway: Replica) -> None:
    body = {"model": "m", "stream": True, "messages": user("lookupCapital of 'France'")}
    with httpx.stream("POST", f"{gateway.url}/v1/chat/completions", json=body, timeout=30) as r:
        assert r.headers["content-type"].startswith("text/event-stream")
        payloads = sse_data(r.iter_lines())
    assert payloads[-1] == "[DONE]"
    chunks = payloads[:-1]
    assert chunks[0]["choices"][0]["delta"] == {"role": "assistant", "content": ""}
    assert {c["object"] for c in chunks} == {"chat.completion.chunk"}
    assert len({c["id"] for c in chunks}) == 1
    events = [c for c in chunks if "tool_event" in c]
    assert all(c["choices"][0]["delta"] == {} for c in events)
    assert [c["choices"][0]["finish_reason"] for c in chunks].count("stop") == 1


@pytest.mark.parametrize("decision", ["approve", "reject"])
def test_decision_on_another_replica_resumes_the_held_stream(
    make_stack: StackFactory, decision: str
) -> None:
    stack = make_stack(replicas=2)
    holder, other = stack.replicas
    seen = consume(
        stream_chat(holder.url, STRING_LENGTH_AB),
        lambda a: decide(other.url, a["id"], decision).raise_for_status(),
    )
    expected = "result" if decision == "approve" else "rejected"
    assert seen.tool_events[-1]["type"] == expected
    assert seen.finish_reason == "stop"


@pytest.mark.parametrize("adapter", ["wire", "langchain"])
def test_either_upstream_adapter_carries_the_whole_approval_loop(
    make_stack: StackFactory, adapter: str
) -> None:
    replica = make_stack(upstream_adapter=adapter).replicas[0]

    def approve(approval: dict[str, Any]) -> None:
        assert decide(replica.url, approval["id"], "approve").status_code == 200

    seen = consume(stream_chat(replica.url, STRING_LENGTH_AB), on_approval=approve)
    assert [e["type"] for e in seen.tool_events] == ["executing", "result"]
    assert seen.text == "getStringLength returned 2."
    assert seen.finish_reason == "stop"
