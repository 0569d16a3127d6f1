"""Random sequences of decision posts against a real gateway keep the decision invariants.

Each example holds a streamed request with three calls, then posts random per-call and
whole-session decisions (some with wrong hashes, unknown ids, or repeats). Invariants:
- at most one final decision per call: once decided, a call's decision never changes;
- a post is 200 only if it agrees with every decision already made, and a refused post
  changes nothing;
- when every call is decided the stream finishes with exactly one tool message per call
  (the offline model quotes each one), and no tool runs without a covering decision.
"""

from __future__ import annotations

from typing import Any

import httpx
import pytest
from hypothesis import HealthCheck, settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, invariant, precondition, rule

from tests.clients import HeldStream, decide, decide_calls
from tests.conftest import Replica

PROMPT = (
    "use getStringLength on 'one' and getStringLength on 'three' and getStringLength on 'seven'"
)
KINDS = ("approve", "reject", "edit", "respond")


def _fingerprint(item: dict[str, Any]) -> tuple[Any, ...]:
    return (
        item["decision"],
        item.get("reason", ""),
        str(item.get("arguments")),
        item.get("result"),
    )


class DecisionMachine(RuleBasedStateMachine):
    replica: Replica

    def __init__(self) -> None:
        super().__init__()
        self.held = HeldStream(self.replica.url, PROMPT)
        self.approval = self.held.wait_pending()
        self.calls = self.approval["tool_calls"]
        self.decided: dict[str, tuple[Any, ...]] = {}
        """What the model of the test says each decided call was decided as."""
        self.seen: dict[str, dict[str, Any]] = {}
        """Each call's decision as the server first reported it."""

    @property
    def session_url(self) -> str:
        return f"{self.replica.url}/v1/approvals/{self.approval['id']}"

    def _item(self, index: int, kind: str, reason: str) -> dict[str, Any]:
        call = self.calls[index]
        item: dict[str, Any] = {"tool_call_id": call["id"], "decision": kind, "reason": reason}
        if kind == "edit":
            item["arguments"] = {"text": f"edit-{reason}"}
        if kind == "respond":
            item["result"] = f"answer-{reason}"
        return item

    @precondition(lambda self: len(self.decided) < 3)
    @rule(
        picks=st.lists(
            st.tuples(st.integers(0, 2), st.sampled_from(KINDS), st.sampled_from(["", "a", "b"])),
            min_size=1,
            max_size=3,
            unique_by=lambda t: t[0],
        ),
        tamper=st.booleans(),
    )
    def post_calls(self, picks: list[tuple[int, str, str]], tamper: bool) -> None:
        items = [self._item(i, kind, reason) for i, kind, reason in picks]
        if tamper:
            items[0]["arguments_sha256"] = "0" * 64
        response = decide_calls(self.replica.url, self.approval["id"], items)
        agrees = all(
            self.decided.get(item["tool_call_id"], _fingerprint(item)) == _fingerprint(item)
            for item in items
        )
        if tamper:
            assert response.status_code == 409, response.text
            assert response.json()["error"]["code"] == "hash_mismatch"
        elif agrees:
            assert response.status_code == 200, response.text
            for item in items:
                self.decided[item["tool_call_id"]] = _fingerprint(item)
        else:
            assert response.status_code == 409, response.text
            assert response.json()["error"]["code"] == "decision_conflict"

    @rule(kind=st.sampled_from(["approve", "reject"]))
    def post_whole(self, kind: str) -> None:
        """The whole-session form decides every undecided call; with none left, it is a
        repeat when every call was decided exactly that way (same kind, no reason, no
        edited arguments, no responded result), else a conflict. Once every call is
        decided the run goes on meanwhile, but that does not change the answer: the store
        compares each call's stored decision (`DECIDE_CALLS`), not the session's status."""
        response = decide(self.replica.url, self.approval["id"], kind)
        whole = (kind, "", "None", None)
        undecided = [c["id"] for c in self.calls if c["id"] not in self.decided]
        if undecided:
            assert response.status_code == 200, response.text
            for call_id in undecided:
                self.decided[call_id] = whole
        elif all(self.decided[c["id"]] == whole for c in self.calls):
            assert response.status_code == 200, response.text  # a repeat changes nothing
        else:
            assert response.status_code == 409, response.text
            assert response.json()["error"]["code"] == "decision_conflict"

    @rule()
    def post_unknown_call(self) -> None:
        item = {"tool_call_id": "call_not_there", "decision": "approve"}
        response = decide_calls(self.replica.url, self.approval["id"], [item])
        assert response.status_code == 400
        assert response.json()["error"]["code"] == "unknown_tool_call"

    @invariant()
    def decisions_never_change(self) -> None:
        session = httpx.get(self.session_url, timeout=10).json()
        for call in session["tool_calls"]:
            decision = call["decision"]
            if call["id"] not in self.decided:
                assert call["status"] == "pending" and decision is None
                continue
            assert decision is not None
            first = self.seen.setdefault(call["id"], decision)
            assert decision == first

    def teardown(self) -> None:
        for call in self.calls:  # finish the session so its stream ends
            if call["id"] not in self.decided:
                item = {"tool_call_id": call["id"], "decision": "reject", "reason": "teardown"}
                assert (
                    decide_calls(self.replica.url, self.approval["id"], [item]).status_code == 200
                )
                self.decided[call["id"]] = _fingerprint(item)
        seen = self.held.wait()
        assert seen.text.count("getStringLength returned") == 3  # one tool message per call
        ran = {e["tool_call_id"] for e in seen.events_of("executing")}
        allowed = {c for c, fp in self.decided.items() if fp[0] in ("approve", "edit")}
        assert ran == allowed  # nothing ran without an approve or edit covering it
        # getStringLength succeeds on any text: a result for every call that ran and for every
        # call a person responded to, and no error.
        answered = {c for c, fp in self.decided.items() if fp[0] in ("approve", "edit", "respond")}
        assert {e["tool_call_id"] for e in seen.events_of("result")} == answered
        assert seen.events_of("error") == []


@pytest.mark.timeout(600)
def test_random_decision_sequences_keep_the_invariants(gateway: Replica) -> None:
    DecisionMachine.replica = gateway
    machine = DecisionMachine.TestCase
    machine.settings = settings(
        max_examples=12,
        stateful_step_count=6,
        deadline=None,
        suppress_health_check=[HealthCheck.too_slow],
    )
    machine().runTest()
