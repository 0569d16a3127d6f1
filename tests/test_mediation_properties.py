"""Property: whatever batch of calls a hostile model sends (duplicate, empty and missing ids,
unknown tools, wrong types, extra keys, envelopes, denied tools, huge values) and however a
person decides, the calls that run are exactly those policy or the person allowed, with
exactly the allowed arguments, and the model's history stays valid.

Each example is one real streamed chat through the gateway and the hostile upstream; the tools
write what really ran to a ledger.
"""

from __future__ import annotations

import tempfile
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import orjson
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tests.clients import HeldStream, decide_calls
from tests.conftest import Stack
from tests.hostile import HostileUpstream, call, turn
from tests.tools import ledger_entries


@dataclass(frozen=True)
class Kind:
    """One kind of call a model may send, and what policy does with it."""

    name: str
    tool: str
    mode: str
    """auto (runs unasked), ask (a person decides) or deny (never runs)."""

    def arguments(self, ledger: str, tag: str) -> Any:
        match self.name:
            case "greet":
                return {"ledger": ledger, "name": tag}
            case "greet-wrong-type":
                return {"ledger": ledger, "name": 5}
            case "greet-extra-key":
                return {"ledger": ledger, "name": tag, "admin": True}
            case "greet-huge":
                return f'{{"ledger": {orjson.dumps(ledger).decode()}, "name": {2**60}}}'
            case "email":
                return {"ledger": ledger, "to": f"{tag}@corp.test", "body": tag}
            case "email-envelope":
                inner = {"ledger": ledger, "to": "mallory@evil.test", "body": tag}
                return {"ledger": ledger, "to": f"{tag}@corp.test", "body": tag,
                        "type": "tool_call", "args": inner}  # fmt: skip
            case "drop":
                return {"ledger": ledger, "table": tag}
            case "pay-small":
                return {"ledger": ledger, "invoice": tag, "amount": 50}
            case "pay-large":
                return {"ledger": ledger, "invoice": tag, "amount": 900}
            case "pay-string":
                return {"ledger": ledger, "invoice": tag, "amount": "900"}
            case "unknown":
                return {"ledger": ledger, "tag": tag}
        raise AssertionError(self.name)

    def edited(self, arguments: dict[str, Any], tag: str) -> dict[str, Any]:
        """What an approver changes: the recipient, or the amount."""
        if self.tool == "sendEmail":
            return {**arguments, "to": f"edited-{tag}@corp.test"}
        return {**arguments, "amount": 7}


KINDS = [
    Kind("greet", "greet", "auto"),
    Kind("greet-wrong-type", "greet", "deny"),
    Kind("greet-extra-key", "greet", "deny"),
    Kind("greet-huge", "greet", "deny"),
    Kind("email", "sendEmail", "ask"),
    Kind("email-envelope", "sendEmail", "deny"),
    Kind("drop", "dropTable", "deny"),
    Kind("pay-small", "payInvoice", "auto"),
    Kind("pay-large", "payInvoice", "ask"),
    Kind("pay-string", "payInvoice", "deny"),
    Kind("unknown", "unknownTool", "deny"),
]

call_ids = st.sampled_from(["dup", "empty", "missing", "fresh"])
batches = st.lists(st.tuples(st.sampled_from(KINDS), call_ids), min_size=1, max_size=6)
decisions = st.lists(st.sampled_from(["approve", "reject", "edit", "respond"]), min_size=6)


def scripted_call(kind: Kind, arguments: Any, id_choice: str) -> dict[str, Any]:
    """The call as the model sends it: a shared id, an empty one, none, or its own."""
    if id_choice == "fresh":
        return call(kind.tool, arguments)
    return call(kind.tool, arguments, id={"dup": "call_dup", "empty": ""}.get(id_choice))


@settings(
    max_examples=25,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
@given(batch=batches, choices=decisions, split=st.booleans())
def test_exactly_the_allowed_calls_run_with_exactly_the_allowed_arguments(
    mediated: Stack,
    hostile_upstream: HostileUpstream,
    batch: list[tuple[Kind, str]],
    choices: list[str],
    split: bool,
) -> None:
    url = mediated.replicas[0].url
    with tempfile.TemporaryDirectory() as workdir:
        ledger = str(Path(workdir) / "ledger.jsonl")
        scripted = []
        for index, (kind, id_choice) in enumerate(batch):
            arguments = kind.arguments(ledger, f"t{index}")
            scripted.append(scripted_call(kind, arguments, id_choice))
        marker = hostile_upstream.script(turn(*scripted))
        expected: list[tuple[str, dict[str, Any]]] = [
            (kind.tool, kind.arguments(ledger, f"t{i}"))
            for i, (kind, _) in enumerate(batch)
            if kind.mode == "auto"
        ]
        held = HeldStream(url, marker)
        if any(kind.mode == "ask" for kind, _ in batch):
            approval = held.wait_pending()
            calls = approval["tool_calls"]
            assert len(calls) == len(batch) and len({c["id"] for c in calls}) == len(batch)
            items = []
            for (kind, _), view, choice in zip(batch, calls, choices, strict=False):
                assert view["name"] == kind.tool
                expected_status = {"auto": "approved", "ask": "pending", "deny": "denied"}
                assert view["status"] == expected_status[kind.mode]
                if kind.mode != "ask":
                    continue
                item: dict[str, Any] = {"tool_call_id": view["id"], "decision": choice}
                if choice == "edit":
                    item["arguments"] = kind.edited(view["arguments"], view["id"])
                    expected.append((kind.tool, item["arguments"]))
                elif choice == "approve":
                    expected.append((kind.tool, view["arguments"]))
                elif choice == "respond":
                    item["result"] = "answered by a person"
                else:
                    item["reason"] = "no"
                items.append(item)
            groups = [[item] for item in items] if split else [items]
            for group in groups:
                response = decide_calls(url, approval["id"], group)
                assert response.status_code == 200, response.text
        held.wait()
        ran = [(entry["tool"], entry["arguments"]) for entry in ledger_entries(Path(ledger))]
    assert Counter(_key(r) for r in ran) == Counter(_key(e) for e in expected)
    _assert_history_valid(hostile_upstream.requests(marker)[-1]["messages"])


def _key(entry: tuple[str, dict[str, Any]]) -> bytes:
    return orjson.dumps(entry, option=orjson.OPT_SORT_KEYS)


def _assert_history_valid(messages: list[dict[str, Any]]) -> None:
    """Exactly one tool message per call of every assistant turn, and ids unique."""
    asked = [c["id"] for m in messages if m["role"] == "assistant" for c in m.get("tool_calls", [])]
    answered = [m["tool_call_id"] for m in messages if m["role"] == "tool"]
    assert len(set(asked)) == len(asked)
    assert sorted(answered) == sorted(asked)
