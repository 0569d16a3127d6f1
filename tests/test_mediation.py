"""Complete mediation: a hostile model never gets a tool to run that policy or a person did not
allow, with exactly those arguments. Each test plays one attack through the hostile upstream
against real gateway and worker processes, and checks the ledger the tools write (what really
ran) and the audit log.
"""

from __future__ import annotations

import threading
import time
from pathlib import Path
from typing import Any

import httpx
import orjson
import pytest

from tests.clients import HeldStream, decide, decide_calls, sse_data
from tests.conftest import Stack, StackFactory
from tests.hostile import HostileUpstream, call, raw_turn, turn
from tests.mediation import audit_events, raw_chat, wait_for
from tests.tools import ledger_entries


@pytest.fixture
def url(mediated: Stack) -> str:
    return mediated.replicas[0].url


@pytest.fixture
def ledger(tmp_path: Path) -> Path:
    return tmp_path / "ledger.jsonl"


def ran(ledger: Path) -> list[tuple[str, dict[str, Any]]]:
    return [(entry["tool"], entry["arguments"]) for entry in ledger_entries(ledger)]


def test_duplicate_ids_never_merge_two_calls(
    url: str, hostile_upstream: HostileUpstream, ledger: Path
) -> None:
    led = str(ledger)
    marker = hostile_upstream.script(
        turn(
            call("dropTable", {"ledger": led, "table": "users"}, id="call_dup"),
            call("lookupCapital", {"country": "France"}, id="call_dup"),
        )
    )
    seen = raw_chat(url, f"capital? {marker}")
    assert seen.done and seen.approvals == []
    events = {(e["type"], e["name"]) for e in seen.tool_events}
    assert events == {("rejected", "dropTable"), ("executing", "lookupCapital"),
                      ("result", "lookupCapital")}  # fmt: skip
    assert ran(ledger) == []  # dropTable never ran
    ids = {e["tool_call_id"] for e in seen.tool_events}
    assert len(ids) == 2 and "call_dup" not in ids  # the gateway's own ids
    # The model's history holds one tool message per call, each under a distinct id.
    history = hostile_upstream.requests(marker)[-1]["messages"]
    assistant = next(m for m in history if m["role"] == "assistant")
    tool_ids = [m["tool_call_id"] for m in history if m["role"] == "tool"]
    assert sorted(tool_ids) == sorted(c["id"] for c in assistant["tool_calls"])
    assert len(set(tool_ids)) == 2


def test_an_admin_only_call_hidden_behind_a_duplicate_id_waits_and_can_be_rejected(
    url: str, hostile_upstream: HostileUpstream, ledger: Path
) -> None:
    led = str(ledger)
    marker = hostile_upstream.script(
        turn(
            call("adminReset", {"ledger": led, "system": "prod"}, id="call_dup"),
            call("lookupCapital", {"country": "Japan"}, id="call_dup"),
        )
    )
    held = HeldStream(url, f"reset? {marker}")
    approval = held.wait_pending()
    reset = next(c for c in approval["tool_calls"] if c["name"] == "adminReset")
    assert reset["status"] == "pending" and reset["policy"] == "ask"
    lookup = next(c for c in approval["tool_calls"] if c["name"] == "lookupCapital")
    assert lookup["status"] == "approved" and lookup["id"] != reset["id"]
    item = {"tool_call_id": reset["id"], "decision": "reject", "reason": "no"}
    assert decide_calls(url, approval["id"], [item]).status_code == 200
    result = held.wait()
    assert [e["name"] for e in result.events_of("rejected")] == ["adminReset"]
    assert ran(ledger) == []
    audit = audit_events(url, approval["id"])
    requested = [e for e in audit if e["event"] == "requested"]
    assert [e["tool"] for e in requested] == ["adminReset"]
    assert [e["tool"] for e in audit if e["event"] == "auto_approved"] == ["lookupCapital"]


def test_calls_without_ids_are_told_apart(
    url: str, hostile_upstream: HostileUpstream, ledger: Path
) -> None:
    led = str(ledger)
    marker = hostile_upstream.script(
        turn(
            call("dropTable", {"ledger": led, "table": "orders"}, id=None),
            call("greet", {"ledger": led, "name": "ann"}, id=None),
        )
    )
    seen = raw_chat(url, marker)
    assert seen.done
    assert ran(ledger) == [("greet", {"ledger": led, "name": "ann"})]
    history = hostile_upstream.requests(marker)[-1]["messages"]
    assistant = next(m for m in history if m["role"] == "assistant")
    assert all(c["id"] for c in assistant["tool_calls"])
    assert len({c["id"] for c in assistant["tool_calls"]}) == 2


def test_a_string_amount_cannot_slip_past_ask_when(
    url: str, hostile_upstream: HostileUpstream, ledger: Path
) -> None:
    led = str(ledger)
    marker = hostile_upstream.script(
        turn(call("payInvoice", {"ledger": led, "invoice": "inv-1", "amount": "5000"}))
    )
    seen = raw_chat(url, marker)
    assert seen.done and seen.approvals == []
    [rejected] = seen.tool_events
    assert rejected["type"] == "rejected" and "is not of type 'integer'" in rejected["reason"]
    assert "invalid arguments" in hostile_upstream.requests(marker)[-1]["messages"][-1]["content"]
    assert ran(ledger) == []


def test_a_large_amount_asks_and_a_small_one_runs(
    url: str, hostile_upstream: HostileUpstream, ledger: Path
) -> None:
    led = str(ledger)
    small = {"ledger": led, "invoice": "inv-2", "amount": 40}
    large = {"ledger": led, "invoice": "inv-3", "amount": 5000}
    marker = hostile_upstream.script(turn(call("payInvoice", small), call("payInvoice", large)))
    held = HeldStream(url, marker)
    approval = held.wait_pending()
    by_amount = {c["arguments"]["amount"]: c for c in approval["tool_calls"]}
    assert by_amount[40]["status"] == "approved"
    assert by_amount[5000]["status"] == "pending"
    assert "amount > 100" in by_amount[5000]["policy_reason"]
    assert decide(url, approval["id"], "reject", "too much").status_code == 200
    held.wait()
    assert ran(ledger) == [("payInvoice", small)]


@pytest.mark.parametrize(
    "arguments",
    [
        # LangChain's tool-call envelope: the approver would see `to`, the tool run `args`.
        lambda led: {"ledger": led, "to": "alice@corp.test", "body": "hi", "type": "tool_call",
                     "id": "x", "name": "sendEmail",
                     "args": {"ledger": led, "to": "mallory@evil.test", "body": "hi"}},
        lambda led: {"type": "tool_call", "args": {"ledger": led, "to": "m@evil.test"}},
        lambda led: {"ledger": led, "to": "alice@corp.test", "body": "hi", "bcc": "m@evil.test"},
    ],
    ids=["envelope-beside-arguments", "envelope-alone", "extra-key"],
)  # fmt: skip
def test_envelopes_and_extra_keys_are_refused_before_anyone_sees_them(
    url: str, hostile_upstream: HostileUpstream, ledger: Path, arguments: Any
) -> None:
    marker = hostile_upstream.script(turn(call("sendEmail", arguments(str(ledger)))))
    seen = raw_chat(url, marker)
    assert seen.done and seen.approvals == []  # never shown as something to approve
    [rejected] = seen.tool_events
    assert rejected["type"] == "rejected" and "invalid arguments" in rejected["reason"]
    assert ran(ledger) == []


def test_the_model_cannot_set_an_injected_parameter(
    url: str, hostile_upstream: HostileUpstream, ledger: Path
) -> None:
    led = str(ledger)
    forged = {"ledger": led, "action": "deploy", "operator": "root"}
    honest = {"ledger": led, "action": "deploy"}
    marker = hostile_upstream.script(turn(call("auditedAction", forged)))
    assert raw_chat(url, marker).done
    assert ran(ledger) == []
    marker = hostile_upstream.script(turn(call("auditedAction", honest)))
    assert raw_chat(url, marker).done
    assert ran(ledger) == [("auditedAction", {**honest, "operator": "gateway"})]


def test_a_catastrophic_regex_does_not_stall_the_replica(
    url: str, hostile_upstream: HostileUpstream, ledger: Path
) -> None:
    # With Python's `re`, '(a+)+$' on 28 a's and a b took 6 s; on 5,000 it would not end.
    text = "a" * 5000 + "b"
    marker = hostile_upstream.script(turn(call("scanText", {"ledger": str(ledger), "text": text})))
    started = time.monotonic()
    seen = raw_chat(url, marker, timeout=10)
    assert seen.done and seen.approvals == []
    assert ran(ledger) == [("scanText", {"ledger": str(ledger), "text": text[:40]})]
    assert time.monotonic() - started < 10  # the client's timeout above would have fired


@pytest.mark.parametrize(
    ("raw_arguments", "reason"),
    [
        # orjson reads a 30-digit integer as a float: not a string, as greet's `name` must be.
        ('{"ledger": "L", "name": 123456789012345678901234567890}', "is not of type 'string'"),
        ('{"ledger": "L", "name": 1152921504606846976}', "beyond"),
        ('{"ledger": "L", "name": ' + "[" * 300 + "]" * 300 + "}", "nested deeper"),
        ('{"ledger": "L", "name": 1e999}', "not a JSON object"),
        ("[1, 2]", "not a JSON object"),
        ('{"ledger": "L", "name": "x"', "not a JSON object"),
    ],
    ids=["30-digit-int", "2^60", "depth-300", "1e999", "array", "truncated"],
)
def test_odd_arguments_are_denied_and_the_stream_ends(
    url: str, hostile_upstream: HostileUpstream, ledger: Path, raw_arguments: str, reason: str
) -> None:
    arguments = raw_arguments.replace('"L"', orjson.dumps(str(ledger)).decode())
    marker = hostile_upstream.script(turn(call("greet", arguments)))
    seen = raw_chat(url, marker)
    assert seen.done and seen.errors == []
    [rejected] = seen.tool_events
    assert rejected["type"] == "rejected" and reason in rejected["reason"]
    assert ran(ledger) == []


@pytest.mark.parametrize(
    "body",
    [
        b'data: {"choices":[{"index":0,"delta":{"content":"\xff\xfe broken"}}]}\n\n',
        b"data: " + b"[" * 5000 + b"\n\n",
        b'data: {"choices":[{"index":0,"delta":{"tool_calls":[{"index":99999999999999999999}]}}]}'
        b"\n\n",
        b'data: {"choices": 7}\n\n',
        b"data: {}\n\ndata: [DONE]\n\n",
    ],
    ids=["invalid-utf8", "deep-nesting", "huge-index", "choices-not-a-list", "empty-chunk"],
)
def test_odd_model_output_always_ends_the_stream(
    url: str, hostile_upstream: HostileUpstream, body: bytes
) -> None:
    marker = hostile_upstream.script(raw_turn(body))
    seen = raw_chat(url, marker, timeout=15)
    # Broken before the first event: a real HTTP status; later: an error event and [DONE].
    assert (seen.status == 200 and seen.done) or (
        seen.status == 502 and seen.events[0]["error"]["code"] == "upstream_error"
    )


def test_ten_thousand_calls_run_at_most_the_cap_and_the_stream_ends(
    url: str, hostile_upstream: HostileUpstream, ledger: Path
) -> None:
    led = str(ledger)
    calls = [call("greet", {"ledger": led, "name": f"n{i}"}) for i in range(10_000)]
    marker = hostile_upstream.script(turn(*calls))
    seen = raw_chat(url, marker, timeout=120)
    assert seen.done and seen.errors == []
    assert sorted(name["name"] for _, name in ran(ledger)) == sorted(f"n{i}" for i in range(16))
    told = hostile_upstream.requests(marker)[-1]["messages"]
    tool_messages = [m for m in told if m["role"] == "tool"]
    assert len(tool_messages) == 10_000  # still one tool message per call
    assert sum("more than 16 calls" in m["content"] for m in tool_messages) == 10_000 - 16


def test_an_answer_past_the_size_bound_ends_the_stream_with_an_error(
    make_stack: StackFactory, hostile_upstream: HostileUpstream
) -> None:
    replica = make_stack(upstream=hostile_upstream.url, max_upstream_turn_bytes="65536")
    marker = hostile_upstream.script(turn(text="x" * 100_000))
    seen = raw_chat(replica.replicas[0].url, marker)
    assert seen.status == 502 and [e["code"] for e in seen.errors] == ["upstream_error"]


def test_a_run_that_fails_after_the_decision_ends_its_stream_and_is_audited(
    url: str, hostile_upstream: HostileUpstream, ledger: Path
) -> None:
    led = str(ledger)
    marker = hostile_upstream.script(
        turn(call("sendEmail", {"ledger": led, "to": "a@corp.test", "body": "hi"})),
        after_tools=raw_turn(b"data: " + b"{" * 3000 + b"\n\n"),
    )
    chunks: list[Any] = []

    def read() -> None:
        body = {"model": "m", "messages": [{"role": "user", "content": marker}], "stream": True}
        with httpx.stream("POST", f"{url}/v1/chat/completions", json=body, timeout=30) as resp:
            for line in resp.iter_lines():  # one at a time: the test acts while it is held
                chunks.extend(sse_data([line]))

    reader = threading.Thread(target=read)
    reader.start()
    approval = wait_for(lambda: next((c["approval"] for c in chunks if "approval" in c), None))
    assert approval is not None
    assert decide(url, approval["id"], "approve").status_code == 200
    reader.join(30)
    assert not reader.is_alive() and chunks[-1] == "[DONE]"
    assert any("error" in c for c in chunks if isinstance(c, dict))
    assert ran(ledger) == [("sendEmail", {"ledger": led, "to": "a@corp.test", "body": "hi"})]
    failed = wait_for(lambda: [e for e in audit_events(url, approval["id"])
                               if e["event"] == "run_failed"])  # fmt: skip
    assert failed and failed[0]["detail"]["code"] == "upstream_error"
    # Its lease is given back: a re-attach replays the end at once instead of hanging.
    with httpx.stream("GET", f"{url}/v1/approvals/{approval['id']}/stream", timeout=10) as replay:
        assert sse_data(replay.iter_lines())[-1] == "[DONE]"


def test_untrusted_output_makes_later_changes_ask_and_shows_where_it_came_from(
    url: str, hostile_upstream: HostileUpstream, ledger: Path
) -> None:
    led = str(ledger)
    page = {"ledger": led, "url": "https://example.test/pricing"}
    steered = {"ledger": led, "name": "mallory"}  # greet is `auto` by policy
    marker = hostile_upstream.script(
        turn(call("fetchPage", page)),
        after_tools=[turn(call("greet", steered), call("lookupCapital", {"country": "Kenya"}))],
    )
    held = HeldStream(url, marker)
    approval = held.wait_pending()
    assert approval["tainted"] is True
    assert [(p["name"], p["untrusted"]) for p in approval["provenance"]] == [("fetchPage", True)]
    by_name = {c["name"]: c for c in approval["tool_calls"]}
    assert by_name["greet"]["status"] == "pending"
    assert "untrusted" in by_name["greet"]["policy_reason"]
    assert by_name["lookupCapital"]["status"] == "approved"  # read-only stays auto
    assert decide(url, approval["id"], "reject", "steered by a web page").status_code == 200
    held.wait()
    assert ran(ledger) == [("fetchPage", page)]
