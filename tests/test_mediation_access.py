"""Complete mediation across requests: grants belong to the requester who received them, a
retried approve never forks a continuation, and one tenant cannot crowd out the others."""

from __future__ import annotations

import threading
from pathlib import Path
from typing import Any

import httpx
import orjson
import pytest

from gateway.auth import hash_key
from tests.clients import HeldStream, bearer, decide, decide_calls, sse_data
from tests.conftest import Replica, StackFactory
from tests.hostile import HostileUpstream, call, turn
from tests.mediation import audit_events, policy_file, raw_chat, wait_for
from tests.tools import MEDIATION_POLICY, ledger_entries

KEYS = {
    "alice": ("key-alice", "acme", ["requester"]),
    "mallory": ("key-mallory", "acme", ["requester"]),
    "bob": ("key-bob", "acme", ["approver"]),
    "gina": ("key-gina", "globex", ["requester"]),
    "root": ("key-root", "ops", ["admin"]),
}


def key(name: str) -> str:
    return KEYS[name][0]


@pytest.fixture
def secured(make_stack: StackFactory, hostile_upstream: HostileUpstream, tmp_path: Path) -> Replica:
    api_keys = [
        {"sha256": hash_key(secret), "name": name, "tenant": tenant, "roles": roles}
        for name, (secret, tenant, roles) in KEYS.items()
    ]
    stack = make_stack(
        upstream=hostile_upstream.url,
        api_keys=orjson.dumps(api_keys).decode(),
        policy_file=policy_file(tmp_path, MEDIATION_POLICY),
        max_pending_sessions_per_tenant="2",
        grant_max_ttl_s="600",
    )
    return stack.replicas[0]


def email(ledger: Path, to: str) -> dict[str, Any]:
    return {"ledger": str(ledger), "to": to, "body": "quarterly numbers"}


def test_a_grant_serves_only_the_requester_and_conversation_it_was_given_to(
    secured: Replica, hostile_upstream: HostileUpstream, tmp_path: Path
) -> None:
    ledger = tmp_path / "ledger.jsonl"
    marker = hostile_upstream.script(turn(call("sendEmail", email(ledger, "cfo@acme.test"))))
    held = HeldStream(secured.url, marker, api_key=key("alice"))
    approval = held.wait_pending()
    conversation = approval["conversation"]
    assert conversation.startswith("conv_")
    [pending] = approval["tool_calls"]
    grant = {"ttl_s": 300}  # same_arguments defaults to true
    item = {"tool_call_id": pending["id"], "decision": "approve", "grant": grant}
    assert decide_calls(secured.url, approval["id"], [item], key=key("bob")).status_code == 200
    held.wait()

    # Mallory (same tenant) reads Alice's session: its conversation id is not shown to her.
    seen = httpx.get(f"{secured.url}/v1/approvals/{approval['id']}", headers=bearer("key-mallory"))
    assert seen.status_code == 200 and seen.json()["conversation"] == ""
    # Even with the id, her calls still ask: the grant is Alice's, and the id was issued to Alice.
    stolen = {"X-Conversation-Id": conversation}
    again = hostile_upstream.script(turn(call("sendEmail", email(ledger, "cfo@acme.test"))))
    theirs = raw_chat(secured.url, again, key=key("mallory"), headers=stolen, until_approval=True)
    assert theirs.approvals and theirs.approvals[0]["tool_calls"][0]["status"] == "pending"
    assert theirs.headers["x-conversation-id"] != conversation
    assert theirs.approvals[0]["conversation_label"] == conversation

    # Alice in her conversation: the same call runs; other arguments still ask.
    mine = raw_chat(secured.url, again, key=key("alice"), headers=stolen)
    assert mine.done and mine.approvals == []
    assert mine.headers["x-conversation-id"] == conversation
    other = hostile_upstream.script(turn(call("sendEmail", email(ledger, "all@acme.test"))))
    asks = raw_chat(secured.url, other, key=key("alice"), headers=stolen, until_approval=True)
    assert asks.approvals and asks.approvals[0]["tool_calls"][0]["status"] == "pending"
    assert [e["arguments"]["to"] for e in ledger_entries(ledger)] == ["cfo@acme.test"] * 2


def test_a_grant_longer_than_the_setting_is_refused(
    secured: Replica, hostile_upstream: HostileUpstream, tmp_path: Path
) -> None:
    marker = hostile_upstream.script(turn(call("sendEmail", email(tmp_path / "l", "x@acme.test"))))
    held = HeldStream(secured.url, marker, api_key=key("alice"))
    approval = held.wait_pending()
    [pending] = approval["tool_calls"]
    grant = {"ttl_s": 7 * 24 * 3600, "same_arguments": False}
    item = {"tool_call_id": pending["id"], "decision": "approve", "grant": grant}
    refused = decide_calls(secured.url, approval["id"], [item], key=key("bob"))
    assert refused.status_code == 400 and "grant_max_ttl_s" in refused.json()["error"]["message"]
    assert decide(secured.url, approval["id"], "reject", key=key("bob")).status_code == 200
    held.wait()


def test_one_tenant_cannot_fill_the_pending_sessions_of_all(
    secured: Replica, hostile_upstream: HostileUpstream, tmp_path: Path
) -> None:
    marker = hostile_upstream.script(turn(call("sendEmail", email(tmp_path / "l", "x@acme.test"))))
    held = [HeldStream(secured.url, marker, api_key=key("alice")) for _ in range(2)]
    for stream in held:
        stream.wait_pending()
    over = raw_chat(secured.url, marker, key=key("mallory"), timeout=10)
    # Refused before the first event: a real 503, which SDKs retry later.
    assert over.status == 503 and [e["code"] for e in over.errors] == ["overloaded"]
    body = {"model": "m", "messages": [{"role": "user", "content": marker}]}
    whole = httpx.post(
        f"{secured.url}/v1/chat/completions", json=body, headers=bearer(key("alice")), timeout=10
    )
    assert whole.status_code == 503 and whole.json()["error"]["code"] == "overloaded"
    # Another tenant still gets its approval.
    other = HeldStream(secured.url, marker, api_key=key("gina"))
    assert other.wait_pending()["tenant"] == "globex"
    for stream in [*held, other]:
        assert (
            decide(secured.url, stream.approval["id"], "reject", key=key("root")).status_code == 200
        )
        stream.wait()
    # Decided sessions stop counting: acme can ask again.
    again = HeldStream(secured.url, marker, api_key=key("alice"))
    assert (
        decide(secured.url, again.wait_pending()["id"], "reject", key=key("root")).status_code
        == 200
    )
    again.wait()


def legacy_stream(url: str, path: str, body: dict[str, Any], out: list[Any]) -> None:
    with httpx.stream("POST", f"{url}{path}", json=body, timeout=60) as response:
        assert response.status_code == 200
        out.extend(sse_data(response.iter_lines()))


def test_a_retried_first_version_approve_never_runs_the_continuation_twice(
    make_stack: StackFactory, hostile_upstream: HostileUpstream, tmp_path: Path
) -> None:
    mediation = policy_file(tmp_path, MEDIATION_POLICY)
    url = make_stack(upstream=hostile_upstream.url, policy_file=mediation).replicas[0].url
    ledger, charges = str(tmp_path / "ledger.jsonl"), str(tmp_path / "charges.txt")
    slow = {"ledger": charges, "entry": "charge-1", "seconds": 1.5}  # chargeCard asks
    later = {"ledger": ledger, "name": "ann"}  # greet runs unasked in the next round
    marker = hostile_upstream.script(
        turn(call("chargeCard", slow)), after_tools=[turn(call("greet", later))]
    )
    opened: list[Any] = []
    legacy_stream(url, "/v1/chat/completion", {"messages": [{"role": "user", "content": marker}]},
                  opened)  # fmt: skip
    session_id = opened[-2]["sessionId"]
    approve = {"sessionid": session_id, "approved": True}
    first: list[Any] = []
    second: list[Any] = []
    threads = [
        threading.Thread(target=legacy_stream, args=(url, "/v1/chat/approve", approve, out))
        for out in (first, second)
    ]
    threads[0].start()

    def charging() -> bool:
        return Path(charges).exists() and "start charge-1" in Path(charges).read_text()

    # The retry comes while the first continuation is running the tool (1.5 s long).
    assert wait_for(charging), "the first continuation did not start the tool"
    threads[1].start()
    for thread in threads:
        thread.join(30)
    assert first[-1] == second[-1] == "[DONE]"
    assert [e["type"] for e in second[:-1]] == ["error"]
    starts = [line for line in Path(charges).read_text().splitlines() if line.startswith("start")]
    assert starts == ["start charge-1"]
    assert [e["tool"] for e in ledger_entries(Path(ledger))] == ["greet"]


def test_the_first_version_approve_does_not_decide_openai_sessions(
    make_stack: StackFactory, hostile_upstream: HostileUpstream, tmp_path: Path
) -> None:
    url = make_stack(upstream=hostile_upstream.url).replicas[0].url
    ledger = tmp_path / "ledger.jsonl"
    marker = hostile_upstream.script(turn(call("sendEmail", email(ledger, "x@acme.test"))))
    held = HeldStream(url, marker)
    approval = held.wait_pending()
    body = {"sessionid": approval["id"], "approved": True}
    refused = httpx.post(f"{url}/v1/chat/approve", json=body, timeout=10)
    assert refused.status_code == 409 and refused.json()["code"] == "wrong_protocol"
    assert httpx.get(f"{url}/v1/approvals/{approval['id']}").json()["status"] == "pending"
    assert decide(url, approval["id"], "approve").status_code == 200
    assert held.wait().events_of("result")
    assert len(ledger_entries(ledger)) == 1
    audited = [e for e in audit_events(url, approval["id"]) if e["event"] == "refused"]
    assert [e["detail"]["code"] for e in audited] == ["wrong_protocol"]
