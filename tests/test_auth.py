"""API keys, tenants and roles on every endpoint, the first version's protocol included."""

from __future__ import annotations

from typing import Any

import httpx
import orjson
import pytest

from gateway.auth import hash_key
from tests.clients import HeldStream, bearer, decide, decide_calls, user
from tests.conftest import Replica, StackFactory

KEYS = {
    "alice": ("key-alice", "acme", ["requester"]),
    "bob": ("key-bob", "acme", ["approver"]),
    "dave": ("key-dave", "acme", ["requester", "approver"]),
    "carol": ("key-carol", "globex", ["approver"]),
    "root": ("key-root", "ops", ["admin"]),
}


def api_keys_setting() -> str:
    return orjson.dumps(
        [
            {"sha256": hash_key(key), "name": name, "tenant": tenant, "roles": roles}
            for name, (key, tenant, roles) in KEYS.items()
        ]
    ).decode()


def key(name: str) -> str:
    return KEYS[name][0]


@pytest.fixture
def secured(make_stack: StackFactory) -> Replica:
    # examples/policy.toml: getStringLength runs on its own unless its text starts with
    # 'secret' (then it asks), and only admins decide deleteNote.
    stack = make_stack(api_keys=api_keys_setting(), policy_file="examples/policy.toml")
    return stack.replicas[0]


def hold_as(
    replica: Replica, name: str, prompt: str = "use getStringLength on 'secret auth'"
) -> HeldStream:
    held = HeldStream(replica.url, prompt, api_key=key(name))
    held.wait_pending()
    return held


def test_requests_without_a_known_key_get_401(secured: Replica) -> None:
    body = {"model": "m", "messages": user("hi")}
    for headers in ({}, bearer("wrong"), {"Authorization": "Basic abc"}):
        response = httpx.post(f"{secured.url}/v1/chat/completions", json=body, headers=headers)
        assert response.status_code == 401
        assert response.json()["error"]["code"] == "unauthorized"
    legacy = httpx.post(f"{secured.url}/v1/chat/completion", json={"messages": user("hi")})
    assert legacy.status_code == 401 and legacy.json()["code"] == "unauthorized"
    assert httpx.get(f"{secured.url}/v1/approvals").status_code == 401
    assert httpx.get(f"{secured.url}/v1/audit").status_code == 401
    assert "auth" not in httpx.get(f"{secured.url}/readyz").json()  # not open


def test_roles_and_tenants_decide_who_sees_and_decides(secured: Replica) -> None:
    held = hold_as(secured, "alice")
    session_id = held.approval["id"]

    def get(name: str) -> int:
        url = f"{secured.url}/v1/approvals/{session_id}"
        return httpx.get(url, headers=bearer(key(name))).status_code

    def listed(name: str) -> set[str]:
        response = httpx.get(f"{secured.url}/v1/approvals", headers=bearer(key(name)))
        return {s["id"] for s in response.json()["data"]}

    assert get("alice") == 200 and get("bob") == 200 and get("root") == 200
    assert get("carol") == 404  # another tenant's session does not exist for carol
    assert session_id in listed("bob") and session_id in listed("root")
    assert session_id not in listed("carol")
    # A requester may not decide; another tenant's approver finds nothing to decide.
    assert decide(secured.url, session_id, "approve", key=key("alice")).status_code == 403
    assert decide(secured.url, session_id, "approve", key=key("carol")).status_code == 404
    assert (
        httpx.get(f"{secured.url}/v1/approvals/{session_id}", headers=bearer(key("bob"))).json()[
            "status"
        ]
        == "pending"
    )
    assert decide(secured.url, session_id, "approve", key=key("bob")).status_code == 200
    assert held.wait().text == "getStringLength returned 11."
    refused = audit_of(secured, "root", session=session_id, event="refused")
    assert {e["actor"] for e in refused} == {"alice", "carol"}


def test_the_requesting_key_may_not_approve_its_own_calls(secured: Replica) -> None:
    held = hold_as(secured, "dave")
    response = decide(secured.url, held.approval["id"], "approve", key=key("dave"))
    assert response.status_code == 403
    assert response.json()["error"]["code"] == "self_approval"
    assert decide(secured.url, held.approval["id"], "approve", key=key("bob")).status_code == 200
    held.wait()


def test_tools_name_the_roles_that_may_decide_them(secured: Replica) -> None:
    # examples/policy.toml: deleteNote is decided by admins only.
    held = hold_as(secured, "alice", "use deleteNote on 'old'")
    [call] = held.approval["tool_calls"]
    item = [{"tool_call_id": call["id"], "decision": "reject", "reason": "no"}]
    refused = decide_calls(secured.url, held.approval["id"], item, key=key("bob"))
    assert refused.status_code == 403 and refused.json()["error"]["code"] == "forbidden"
    assert decide_calls(secured.url, held.approval["id"], item, key=key("root")).status_code == 200
    held.wait()


def test_the_first_version_protocol_follows_the_keys(secured: Replica) -> None:
    body = {"messages": user("use getStringLength on 'secret legacy'")}
    with httpx.stream(
        "POST", f"{secured.url}/v1/chat/completion", json=body, headers=bearer(key("alice"))
    ) as response:
        assert response.status_code == 200
        events = [
            orjson.loads(line[6:]) for line in response.iter_lines() if line.startswith("data: {")
        ]
    [notice] = [e for e in events if e["type"] == "approvalRequired"]
    approve = {"sessionid": notice["sessionId"], "approved": True}
    as_requester = httpx.post(
        f"{secured.url}/v1/chat/approve", json=approve, headers=bearer(key("alice"))
    )
    assert as_requester.status_code == 403 and as_requester.json()["type"] == "error"
    with httpx.stream(
        "POST",
        f"{secured.url}/v1/chat/approve",
        json=approve,
        headers=bearer(key("bob")),
        timeout=30,
    ) as response:
        assert response.status_code == 200
        text = "".join(response.iter_text())
    assert '"toolResult"' in text and '"result":"13"' in text


def test_an_open_gateway_says_so(gateway: Replica) -> None:
    assert "OPEN" in httpx.get(f"{gateway.url}/readyz").json()["auth"]


def audit_of(replica: Replica, name: str, **filters: str) -> list[dict[str, Any]]:
    response = httpx.get(f"{replica.url}/v1/audit", params=filters, headers=bearer(key(name)))
    assert response.status_code == 200, response.text
    data: list[dict[str, Any]] = response.json()["data"]
    return data


def test_a_key_learns_who_it_is(secured: Replica) -> None:
    for name, (secret, tenant, roles) in KEYS.items():
        response = httpx.get(f"{secured.url}/v1/me", headers=bearer(secret))
        assert response.json() == {
            "object": "principal",
            "name": name,
            "tenant": tenant,
            "roles": sorted(roles),
            "open": False,
        }
    refused = httpx.get(f"{secured.url}/v1/me", headers=bearer("wrong"))
    assert refused.status_code == 401 and refused.json()["error"]["code"] == "unauthorized"
