"""Property: whatever mix of client-declared and server-side calls a turn holds, and whatever a
person decides in whatever order, the client receives exactly the approved and edited client
calls, with exactly those arguments, and every later history the model sees is valid (one
tool message per call)."""

from __future__ import annotations

import secrets
import tempfile
import threading
from pathlib import Path
from typing import Any

import httpx
import orjson
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tests.clients import decide_calls
from tests.conftest import Stack
from tests.hostile import HostileUpstream, call, turn
from tests.mediation import wait_for

CLIENT_TOOLS = [
    {
        "type": "function",
        "function": {
            "name": name,
            "parameters": {
                "type": "object",
                "properties": {"target": {"type": "string"}},
                "required": ["target"],
            },
        },
    }
    for name in ("client_send", "client_delete")
]
# (tool, side, mode under MEDIATION_POLICY and [client_default] = ask)
KINDS = [
    ("client_send", "client", "ask"),
    ("client_delete", "client", "ask"),
    ("greet", "server", "auto"),
    ("sendEmail", "server", "ask"),
    ("dropTable", "server", "deny"),
]


def arguments(tool: str, ledger: str, tag: str) -> dict[str, Any]:
    if tool.startswith("client_"):
        return {"target": tag}
    if tool == "greet":
        return {"ledger": ledger, "name": tag}
    if tool == "sendEmail":
        return {"ledger": ledger, "to": f"{tag}@corp.test", "body": tag}
    return {"ledger": ledger, "table": tag}


@settings(
    max_examples=25,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
@given(
    kinds=st.lists(st.sampled_from(KINDS), min_size=1, max_size=5),
    choices=st.lists(st.sampled_from(["approve", "reject", "edit", "respond"]), min_size=5),
    order=st.randoms(use_true_random=False),
)
def test_the_client_receives_exactly_the_approved_client_calls(
    mediated: Stack,
    hostile_upstream: HostileUpstream,
    kinds: list[tuple[str, str, str]],
    choices: list[str],
    order: Any,
) -> None:
    url = mediated.replicas[0].url
    label = f"prop-{secrets.token_hex(8)}"
    with tempfile.TemporaryDirectory() as workdir:
        ledger = str(Path(workdir) / "ledger.jsonl")
        scripted = [call(t, arguments(t, ledger, f"t{i}")) for i, (t, _, _) in enumerate(kinds)]
        marker = hostile_upstream.script(turn(*scripted))
        question = [{"role": "user", "content": marker}]
        answer: dict[str, Any] = {}
        failures: list[BaseException] = []

        def ask() -> None:
            try:
                answer.update(_chat(url, question, label))
            except BaseException as error:  # reported below, in the test's own thread
                failures.append(error)

        asker = threading.Thread(target=ask)
        asker.start()
        expected: list[tuple[str, dict[str, Any]]] = []
        if any(mode == "ask" for _, _, mode in kinds):
            session = wait_for(lambda: _pending(url, label), timeout=20)
            assert session, "no approval session"
            items = []
            for (tool, side, mode), view, choice in zip(
                kinds, session["tool_calls"], choices, strict=False
            ):
                assert (view["name"], view["side"]) == (tool, side)
                if mode != "ask":
                    continue
                item: dict[str, Any] = {"tool_call_id": view["id"], "decision": choice}
                if choice == "edit":
                    item["arguments"] = {**view["arguments"], **_edited(tool, view["id"])}
                if choice == "respond":
                    item["result"] = "answered by a person"
                items.append(item)
                if side == "client" and choice in ("approve", "edit"):
                    expected.append((tool, item.get("arguments", view["arguments"])))
            order.shuffle(items)
            for item in items:
                assert decide_calls(url, session["id"], [item]).status_code == 200
        asker.join(60)
        assert not asker.is_alive() and failures == []
        received = [
            (c["function"]["name"], orjson.loads(c["function"]["arguments"]))
            for c in answer.get("tool_calls") or []
        ]
        assert sorted(map(_key, received)) == sorted(map(_key, expected))
        if received:  # the client runs them and comes back: the turn is restored whole
            results = [
                {"role": "tool", "tool_call_id": c["id"], "content": f"ran {c['id']}"}
                for c in answer["tool_calls"]
            ]
            follow_up = [*question, {"role": "assistant", "content": None,
                                     "tool_calls": answer["tool_calls"]}, *results]  # fmt: skip
            final = _chat(url, follow_up, label)
            assert final["finish_reason"] == "stop"
        history = hostile_upstream.requests(marker)[-1]["messages"]
        _assert_valid(history, len(kinds))


def _edited(tool: str, call_id: str) -> dict[str, Any]:
    if tool.startswith("client_"):
        return {"target": f"edited-{call_id}"}
    return {"to": f"edited-{call_id}@corp.test"}


def _key(entry: tuple[str, dict[str, Any]]) -> bytes:
    return orjson.dumps(entry, option=orjson.OPT_SORT_KEYS)


def _chat(url: str, messages: list[dict[str, Any]], label: str) -> dict[str, Any]:
    body = {"model": "m", "messages": messages, "tools": CLIENT_TOOLS}
    response = httpx.post(
        f"{url}/v1/chat/completions",
        json=body,
        headers={"X-Conversation-Id": label},
        timeout=60,
    )
    assert response.status_code == 200, response.text
    choice = response.json()["choices"][0]
    return {**choice["message"], "finish_reason": choice["finish_reason"]}


def _pending(url: str, label: str) -> dict[str, Any] | None:
    found = httpx.get(f"{url}/v1/approvals", params={"conversation": label}, timeout=10)
    data = found.json()["data"]
    return dict(data[0]) if data else None


def _assert_valid(messages: list[dict[str, Any]], calls: int) -> None:
    """One tool message per call of every assistant turn; the scripted turn whole."""
    asked = [c["id"] for m in messages if m["role"] == "assistant" for c in m.get("tool_calls", [])]
    answered = [m["tool_call_id"] for m in messages if m["role"] == "tool"]
    assert len(asked) == calls and len(set(asked)) == calls
    assert sorted(answered) == sorted(asked)
