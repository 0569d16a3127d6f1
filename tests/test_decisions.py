"""Per-call decisions (approve, reject, edit, respond), partial posts, hash binding, grants."""

from __future__ import annotations

from typing import Any

import httpx
import pytest

from core.records import Decision, arguments_sha256
from core.store import RunnableCall
from tests.clients import HeldStream, decide_calls
from tests.conftest import Replica, StackFactory
from tests.redis_state import entry_ms, jobs_of, redis_now_ms

FOUR_CALLS = (
    "use getStringLength on 'a' and getStringLength on 'bb' "
    "and getStringLength on 'ccc' and getStringLength on 'dddd'"
)


def session_of(replica: Replica, session_id: str) -> dict[str, Any]:
    response = httpx.get(f"{replica.url}/v1/approvals/{session_id}", timeout=10)
    assert response.status_code == 200
    body: dict[str, Any] = response.json()
    return body


def test_mixed_per_call_decisions_in_two_posts_give_one_tool_message_per_call(
    gateway: Replica,
) -> None:
    held = HeldStream(gateway.url, FOUR_CALLS)
    approval = held.wait_pending()
    first, second, third, fourth = (c["id"] for c in approval["tool_calls"])
    partial = decide_calls(
        gateway.url,
        approval["id"],
        [
            {"tool_call_id": first, "decision": "approve"},
            {"tool_call_id": second, "decision": "reject", "reason": "too long"},
        ],
    )
    assert partial.status_code == 200, partial.text
    assert partial.json()["status"] == "pending"  # two calls still wait: nothing runs yet
    assert [c["status"] for c in session_of(gateway, approval["id"])["tool_calls"]] == [
        "approved",
        "rejected",
        "pending",
        "pending",
    ]
    # Nothing may run before the last call is decided: checked once the run has ended, on
    # the job stream, whose entry ids are Redis's clock (below).
    second_post_at = redis_now_ms(gateway.stack)
    rest = decide_calls(
        gateway.url,
        approval["id"],
        [
            {"tool_call_id": third, "decision": "edit", "arguments": {"text": "edited!"}},
            {"tool_call_id": fourth, "decision": "respond", "result": "42"},
        ],
    )
    assert rest.status_code == 200, rest.text
    seen = held.wait()
    # The offline model quotes each tool message in order: exactly four, one per call.
    assert seen.text.count("getStringLength returned") == 4
    assert seen.text.startswith("getStringLength returned 1, ")
    assert "The user rejected this tool call, so it was not run. Reason: too long" in seen.text
    assert 'edited this call\'s arguments to {"text":"edited!"} before it ran.\n7' in seen.text
    assert seen.text.endswith(" and getStringLength returned 42.")
    [edited] = [e for e in seen.events_of("executing") if e.get("edited")]
    assert edited["tool_call_id"] == third and edited["arguments"] == {"text": "edited!"}
    [responded] = [e for e in seen.events_of("result") if e.get("responded")]
    assert responded["tool_call_id"] == fourth and responded["content"] == "42"
    final = session_of(gateway, approval["id"])
    assert [c["status"] for c in final["tool_calls"]] == [
        "succeeded",
        "rejected",
        "succeeded",
        "responded",
    ]
    assert final["tool_calls"][2]["result"]["content"] == "7"
    # The run has ended (the stream did): the two calls that ran were each queued once, and
    # only after the second post; the partial decision queued nothing.
    jobs = jobs_of(gateway.stack, approval["id"])
    assert sorted(job["tool_call_id"] for _, job in jobs) == sorted([first, third])
    assert all(entry_ms(entry_id) >= second_post_at for entry_id, _ in jobs)


def test_a_repeated_per_call_decision_is_200_and_a_different_one_409(gateway: Replica) -> None:
    held = HeldStream(gateway.url, "use getStringLength on 'x' and getStringLength on 'yy'")
    approval = held.wait_pending()
    first, second = (c["id"] for c in approval["tool_calls"])
    item = {"tool_call_id": first, "decision": "reject", "reason": "no"}
    assert decide_calls(gateway.url, approval["id"], [item]).status_code == 200
    assert decide_calls(gateway.url, approval["id"], [item]).status_code == 200
    changed = decide_calls(gateway.url, approval["id"], [{**item, "reason": "other"}])
    assert changed.status_code == 409
    assert changed.json()["error"]["code"] == "decision_conflict"
    # A post whose other item is fine changes nothing when one item conflicts.
    mixed = [
        {**item, "decision": "approve", "reason": ""},
        {"tool_call_id": second, "decision": "approve"},
    ]
    assert decide_calls(gateway.url, approval["id"], mixed).status_code == 409
    assert session_of(gateway, approval["id"])["tool_calls"][1]["status"] == "pending"
    assert decide_calls(gateway.url, approval["id"], [mixed[1]]).status_code == 200
    assert held.wait().text.count("getStringLength returned") == 2


@pytest.mark.parametrize(
    ("item", "status", "code", "names"),
    [
        (
            {"decision": "edit", "arguments": {"text": 5}},
            400,
            "invalid_arguments",
            "arguments.text",
        ),
        ({"decision": "edit", "arguments": {}}, 400, "invalid_arguments", "arguments.text"),
        (
            {"decision": "edit", "arguments": {"text": "a"}, "name": "deleteNote"},
            400,
            "invalid_request",
            "name",
        ),
        ({"decision": "edit"}, 400, "invalid_request", "needs 'arguments'"),
        ({"decision": "respond"}, 400, "invalid_request", "needs 'result'"),
        (
            {"decision": "approve", "arguments_sha256": "0" * 64},
            409,
            "hash_mismatch",
            "arguments_sha256",
        ),
        (
            {"decision": "approve", "tool_call_id": "call_nope"},
            400,
            "unknown_tool_call",
            "call_nope",
        ),
        ({"decision": "maybe"}, 400, "invalid_request", "decision"),
    ],
)
def test_bad_decisions_are_refused_and_change_nothing(
    gateway: Replica, item: dict[str, Any], status: int, code: str, names: str
) -> None:
    held = HeldStream(gateway.url, "use getStringLength on 'bad input'")
    approval = held.wait_pending()
    [call] = approval["tool_calls"]
    response = decide_calls(gateway.url, approval["id"], [{"tool_call_id": call["id"], **item}])
    assert response.status_code == status, response.text
    error = response.json()["error"]
    assert error["code"] == code and names in error["message"]
    assert session_of(gateway, approval["id"])["tool_calls"][0]["status"] == "pending"
    good = {
        "tool_call_id": call["id"],
        "decision": "approve",
        "arguments_sha256": call["arguments_sha256"],
    }
    assert decide_calls(gateway.url, approval["id"], [good]).status_code == 200
    assert held.wait().text == "getStringLength returned 9."


def test_a_runnable_call_binds_what_may_run_to_the_approved_hash() -> None:
    """`RunnableCall.of`, what a worker checks before it runs a call: the arguments it would
    run are the edited ones when edited, and stored arguments that changed after the
    decision no longer match the approved hash. (No worker runs here: that a worker refuses
    such a call is tests/test_worker_checks.py.)"""
    call = {"name": "getStringLength", "arguments": {"text": "abc"}, "arguments_sha256": "x"}
    approved = Decision(decision="approve", arguments_sha256=arguments_sha256({"text": "ab"}))
    runnable = RunnableCall.of(call, approved)
    assert arguments_sha256(runnable.arguments) != runnable.approved_sha256
    edited = Decision(
        decision="edit", arguments={"text": "zz"}, arguments_sha256=arguments_sha256({"text": "zz"})
    )
    runnable = RunnableCall.of(call, edited)
    assert runnable.arguments == {"text": "zz"}
    assert arguments_sha256(runnable.arguments) == runnable.approved_sha256


def test_policy_refuses_edits_it_does_not_allow(make_stack: StackFactory) -> None:
    replica = make_stack(policy_file="examples/policy.toml").replicas[0]
    held = HeldStream(replica.url, "use deleteNote on 'todo'")
    approval = held.wait_pending()
    [call] = approval["tool_calls"]
    edit = {"tool_call_id": call["id"], "decision": "edit", "arguments": {"name": "other"}}
    refused = decide_calls(replica.url, approval["id"], [edit])
    assert refused.status_code == 403
    assert refused.json()["error"]["code"] == "edit_refused"
    reject = {"tool_call_id": call["id"], "decision": "reject", "reason": "keep it"}
    assert decide_calls(replica.url, approval["id"], [reject]).status_code == 200
    assert "Reason: keep it" in held.wait().text


def test_a_grant_lets_later_calls_in_the_conversation_run_without_asking(
    gateway: Replica,
) -> None:
    # The gateway issues the conversation id (a client's own name is only a label).
    held = HeldStream(
        gateway.url, "use getStringLength on 'first'", headers={"X-Conversation-Id": "mine"}
    )
    approval = held.wait_pending()
    assert approval["conversation_label"] == "mine"
    conversation = {"X-Conversation-Id": approval["conversation"]}
    [call] = approval["tool_calls"]
    grant = {"ttl_s": 60, "same_arguments": False}
    item = {"tool_call_id": call["id"], "decision": "approve", "grant": grant}
    assert decide_calls(gateway.url, approval["id"], [item]).status_code == 200
    assert held.wait().text == "getStringLength returned 5."
    # Same conversation: covered, runs at once. Another conversation: asks again.
    again = HeldStream(gateway.url, "use getStringLength on 'second'", headers=conversation)
    seen = again.wait()
    assert seen.text == "getStringLength returned 6."
    assert [a["status"] for a in seen.approvals] == []
    other = HeldStream(
        gateway.url, "use getStringLength on 'third'", headers={"X-Conversation-Id": "mine"}
    )
    other_approval = other.wait_pending()
    assert other_approval["conversation"] != approval["conversation"]
    audit = httpx.get(f"{gateway.url}/v1/audit", params={"event": "granted_run"}).json()["data"]
    assert any(e["actor"] == "grant" and e["tool"] == "getStringLength" for e in audit)
    reject = {"tool_call_id": other_approval["tool_calls"][0]["id"], "decision": "reject"}
    assert decide_calls(gateway.url, other_approval["id"], [reject]).status_code == 200
    other.wait()


def test_every_request_gets_a_conversation_to_scope_grants_to(gateway: Replica) -> None:
    held = HeldStream(gateway.url, "use getStringLength on 'lonely'")
    approval = held.wait_pending()
    assert approval["conversation"].startswith("conv_") and approval["conversation_label"] == ""
    [call] = approval["tool_calls"]
    item = {"tool_call_id": call["id"], "decision": "approve", "grant": {"ttl_s": 60}}
    assert decide_calls(gateway.url, approval["id"], [item]).status_code == 200
    held.wait()
