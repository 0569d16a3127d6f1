"""Traces: one approved request is one trace across replicas and workers (OTLP/HTTP).

The processes export to a real OTLP/HTTP receiver (tests/otlp.py), turned on by the
standard variables only. The request waits on a person longer than two heartbeats, is
decided on another replica, runs two tools on two workers (each takes one job at a time,
and each tool takes a second), and answers.
"""

from __future__ import annotations

import secrets
import time
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from opentelemetry.proto.trace.v1.trace_pb2 import Span

from core import tracing
from tests.clients import HeldStream, decide, sse_data, user
from tests.conftest import Stack, StackFactory
from tests.otlp import Collector, ReceivedSpan, otlp_receiver, tree

HEARTBEAT_S = 1.0


@pytest.fixture
def collector(monkeypatch: pytest.MonkeyPatch) -> Iterator[Collector]:
    """A receiver, and the standard variables pointing every process started after at it."""
    with otlp_receiver() as (url, spans):
        monkeypatch.setenv("OTEL_EXPORTER_OTLP_ENDPOINT", url)
        monkeypatch.setenv("OTEL_BSP_SCHEDULE_DELAY", "100")
        yield spans


def named(spans: Iterable[ReceivedSpan], name: str) -> list[ReceivedSpan]:
    return sorted((s for s in spans if s.name == name), key=lambda s: s.start_ns)


def of_trace(spans: Iterable[ReceivedSpan], trace_id: str) -> list[ReceivedSpan]:
    return [s for s in spans if s.trace_id == trace_id]


def test_an_approved_request_is_one_trace_across_replicas_and_workers(
    make_stack: StackFactory, collector: Collector, tmp_path: Path
) -> None:
    stack = make_stack(
        replicas=2,
        workers=2,
        worker__concurrency="1",
        heartbeat_interval_s=str(HEARTBEAT_S),
    )
    holder, other = stack.replicas
    client_trace, client_span = secrets.token_hex(16), secrets.token_hex(8)
    traceparent = f"00-{client_trace}-{client_span}-01"
    ledger = tmp_path / "ledger"
    prompt = f"Use chargeCard '{ledger}' 'one' 1 and chargeCard '{ledger}' 'two' 1"
    held = HeldStream(holder.url, prompt, headers={"traceparent": traceparent})
    session = held.wait_pending()
    time.sleep(2.5 * HEARTBEAT_S)  # people are slow: the stream is held over two heartbeats
    assert not held.finished_at
    assert decide(other.url, session["id"], "approve", "traced").status_code == 200
    result = held.wait()
    assert result.finish_reason == "stop"
    assert ledger.read_text().count("end ") == 2

    def complete(spans: list[ReceivedSpan]) -> bool:
        mine = of_trace(spans, client_trace)
        return (
            len(named(mine, "execute_tool chargeCard")) == 2
            and len(named(mine, "chat offline-model")) == 2
            and len(named(mine, "approval wait")) == 1
            and len(named(mine, "POST /v1/chat/completions")) == 1
            and len(named(spans, "POST /v1/approvals/{session_id}/decision")) == 1
        )

    spans = collector.wait_for(complete)
    print("\n" + tree(spans, client_trace))  # the trace, for the reader of -s output
    assert complete(spans), [s.name for s in spans]
    mine = of_trace(spans, client_trace)

    # The chat request: a server span whose parent is the client's span.
    [request] = named(mine, "POST /v1/chat/completions")
    assert request.parent_id == client_span
    assert request.kind == Span.SPAN_KIND_SERVER
    assert request.service == "approval-gateway"
    assert request.attributes["http.route"] == "/v1/chat/completions"
    assert request.attributes["http.response.status_code"] == 200

    # Two model turns, generative-AI conventions: the calls, then the answer.
    asked, answered = named(mine, "chat offline-model")
    for turn in (asked, answered):
        assert turn.parent_id == request.span_id
        assert turn.kind == Span.SPAN_KIND_CLIENT
        assert turn.attributes["gen_ai.operation.name"] == "chat"
        assert turn.attributes["gen_ai.request.model"] == "offline-model"
        assert turn.attributes["gen_ai.usage.input_tokens"] > 0
        assert turn.attributes["gen_ai.usage.output_tokens"] > 0
    assert asked.attributes["gen_ai.response.finish_reasons"] == ["tool_calls"]
    assert answered.attributes["gen_ai.response.finish_reasons"] == ["stop"]

    # The wait: from the opening to the decision, with the tools, decisions and actor.
    [wait] = named(mine, "approval wait")
    assert wait.parent_id == request.span_id
    assert wait.attributes["gen_ai.tool.name"] == ["chargeCard", "chargeCard"]
    assert wait.attributes["approval.decisions"] == ["approve", "approve"]
    assert wait.attributes["approval.actors"] == ["anonymous"]
    assert wait.attributes["approval.session_id"] == session["id"]
    assert wait.seconds >= 2.5 * HEARTBEAT_S
    assert abs(wait.start_ns / 1e9 - session["created_at"]) < 0.01
    assert asked.end_ns <= wait.start_ns + 10_000_000  # it opens as the first turn ends

    # The decision: its own request (another trace, another replica), linked to the wait.
    [decision] = named(spans, "POST /v1/approvals/{session_id}/decision")
    assert decision.trace_id != client_trace
    assert decision.instance != request.instance
    assert decision.links == [(client_trace, wait.span_id)]
    assert decision.attributes["approval.decisions"] == ["approve"]
    assert abs(decision.end_ns - wait.end_ns) < 1e9

    # The tools: one per worker, in this trace, started after the decision and before the
    # answer.
    runs = named(mine, "execute_tool chargeCard")
    assert {run.service for run in runs} == {"approval-gateway-worker"}
    assert len({run.instance for run in runs}) == 2
    for run in runs:
        assert run.parent_id == request.span_id
        assert run.attributes["gen_ai.operation.name"] == "execute_tool"
        assert run.attributes["gen_ai.tool.name"] == "chargeCard"
        assert run.attributes["worker.outcome"] == "succeeded"
        assert run.seconds >= 1.0
        # (The worker's span ends after its audit entry and ack, which can be after the
        # stored result has woken the answer's turn.)
        assert decision.start_ns < run.start_ns < answered.start_ns
    ids = {run.attributes["gen_ai.tool.call.id"] for run in runs}
    assert ids == {call["id"] for call in session["tool_calls"]}
    # Everything of the request is under its span: nothing dangles in the trace.
    assert {s.parent_id for s in mine} <= {s.span_id for s in mine} | {client_span}


def test_a_run_taken_over_after_its_replica_died_stays_in_its_trace(
    make_stack: StackFactory, collector: Collector
) -> None:
    stack = make_stack(replicas=2, lease_s="1.5", heartbeat_interval_s=str(HEARTBEAT_S))
    session_id, notice_id = _hold(stack, "getStringLength of 'traced'")
    holder = _lease_holder(stack, session_id)
    [survivor] = [r for r in stack.replicas if r is not holder]
    holder.process.kill()
    assert decide(survivor.url, session_id, "approve").status_code == 200
    events = _reattach(survivor.url, session_id, notice_id)
    assert events[-1] == "[DONE]"
    assert any(isinstance(e, dict) and "resumed" in e for e in events)

    def complete(spans: list[ReceivedSpan]) -> bool:
        names = {s.name for s in spans}
        ended = {"run resume", "run takeover", "approval wait", "chat offline-model"}
        return ended | {"GET /v1/approvals/{session_id}/stream"} <= names

    spans = collector.wait_for(complete)
    assert complete(spans), sorted(s.name for s in spans if "readyz" not in s.name)
    [wait] = named(spans, "approval wait")
    [resume] = named(spans, "run resume")
    [takeover] = named(spans, "run takeover")
    # The replica that was killed exported nothing after the notice (its request's span
    # never ended): the survivor's spans still join the trace the session carries, under
    # the request's span, the answer's turn included.
    trace_id = wait.trace_id
    for span in (resume, takeover, *named(spans, "chat offline-model")):
        assert span.trace_id == trace_id
        assert span.parent_id == wait.parent_id
    for span in (wait, resume, takeover):  # the survivor ended the wait and took over
        assert f":{survivor.process.pid}:" in span.instance
    assert takeover.attributes["run.token"] >= 1
    assert resume.attributes["run.after"] == notice_id
    [reattach_request] = named(spans, "GET /v1/approvals/{session_id}/stream")
    assert resume.links == [(reattach_request.trace_id, reattach_request.span_id)]
    assert wait.attributes["approval.decisions"] == ["approve"]


def test_no_trace_context_is_stored_while_traces_are_off(make_stack: StackFactory) -> None:
    assert not tracing.wanted({})
    stack = make_stack()
    session_id, _ = _hold(stack, "getStringLength of 'untraced'")
    fields = stack.redis.client().hgetall(stack.keys.session(session_id))
    assert fields and "trace" not in fields and "wait_span" not in fields


@pytest.mark.parametrize(
    ("env", "wanted"),
    [
        ({}, False),
        ({"OTEL_EXPORTER_OTLP_ENDPOINT": "http://collector:4318"}, True),
        ({"OTEL_EXPORTER_OTLP_TRACES_ENDPOINT": "http://collector:4318/v1/traces"}, True),
        ({"OTEL_EXPORTER_OTLP_ENDPOINT": "http://c:4318", "OTEL_SDK_DISABLED": "true"}, False),
        ({"OTEL_EXPORTER_OTLP_ENDPOINT": "http://c:4318", "OTEL_TRACES_EXPORTER": "none"}, False),
    ],
)
def test_only_the_standard_variables_turn_traces_on(env: dict[str, str], wanted: bool) -> None:
    assert tracing.wanted(env) is wanted


def _hold(stack: Stack, prompt: str) -> tuple[str, int]:
    """Open a streamed chat on the first replica, read to its notice, hang up."""
    body = {"model": "offline-model", "stream": True, "messages": user(prompt)}
    url = stack.replicas[0].url
    with httpx.stream("POST", f"{url}/v1/chat/completions", json=body, timeout=30) as response:
        event_id = ""
        for line in response.iter_lines():
            if line.startswith("id: "):
                event_id = line[4:]
            elif line.startswith("data: ") and '"approval"' in line:
                notice = sse_data([line])[0]
                return notice["approval"]["id"], int(event_id)
    raise AssertionError("no approval notice")


def _reattach(url: str, session_id: str, after: int) -> list[Any]:
    headers = {"Last-Event-ID": str(after)}
    stream_url = f"{url}/v1/approvals/{session_id}/stream"
    with httpx.stream("GET", stream_url, headers=headers, timeout=60) as response:
        assert response.status_code == 200
        return sse_data(response.iter_lines())


def _lease_holder(stack: Stack, session_id: str) -> Any:
    owner = stack.redis.client().get(stack.keys.lease(session_id))
    assert owner is not None
    pid = int(str(owner).split(":")[1])
    [replica] = [r for r in stack.replicas if r.process.pid == pid]
    return replica
