"""The audit log: every event of a session, queryable over HTTP and exported as JSON lines."""

from __future__ import annotations

import subprocess
import sys
import time
from typing import Any

import httpx
import orjson

from gateway.auth import hash_key
from tests.clients import HeldStream, bearer, decide, decide_calls
from tests.conftest import Replica, StackFactory
from tests.processes import ROOT

# name: (tenant, roles); each key is "key-<name>"
KEYS = {
    "acme-requester": ("acme", ["requester"]),
    "acme-approver": ("acme", ["approver"]),
    "globex-requester": ("globex", ["requester"]),
    "root": ("ops", ["admin"]),
}


def audit(replica: Replica, **filters: str) -> list[dict[str, Any]]:
    response = httpx.get(f"{replica.url}/v1/audit", params=filters, timeout=10)
    assert response.status_code == 200, response.text
    data: list[dict[str, Any]] = response.json()["data"]
    return data


def audit_as(replica: Replica, name: str, **filters: str) -> list[dict[str, Any]]:
    headers = bearer(f"key-{name}")
    response = httpx.get(f"{replica.url}/v1/audit", params=filters, headers=headers, timeout=10)
    assert response.status_code == 200, response.text
    data: list[dict[str, Any]] = response.json()["data"]
    return data


def test_a_session_leaves_requested_decided_and_executed_entries(gateway: Replica) -> None:
    held = HeldStream(gateway.url, "use getStringLength on 'audited' and getStringLength on 'no'")
    approval = held.wait_pending()
    first, second = approval["tool_calls"]
    items = [
        {"tool_call_id": first["id"], "decision": "approve"},
        {"tool_call_id": second["id"], "decision": "reject", "reason": "not this one"},
    ]
    assert decide_calls(gateway.url, approval["id"], items).status_code == 200
    held.wait()
    entries = audit(gateway, session=approval["id"])
    events = [(e["event"], e["call"]) for e in entries]
    assert events[:2] == [("requested", first["id"]), ("requested", second["id"])]
    decided = {e["call"]: e for e in entries if e["event"] == "decided"}
    assert decided[first["id"]]["detail"]["decision"] == "approve"
    assert decided[first["id"]]["detail"]["arguments_sha256"] == first["arguments_sha256"]
    # Written with the decision into the session's outbox, relayed here (`outbox_id` tells
    # a relayed-twice entry from its twin).
    rejected = decided[second["id"]]["detail"]
    assert rejected.pop("outbox_id").startswith(f"{approval['id']}/")
    assert rejected == {
        "decision": "reject",
        "reason": "not this one",
        "arguments_sha256": second["arguments_sha256"],
    }
    assert decided[first["id"]]["actor"] == "anonymous"
    # Only the approved call ran: one executed entry, from a worker, with its outcome.
    deadline = time.monotonic() + 5
    while not (
        executed := [e for e in audit(gateway, session=approval["id"]) if e["event"] == "executed"]
    ):
        assert time.monotonic() < deadline
        time.sleep(0.05)
    [ran] = executed
    assert ran["call"] == first["id"] and ran["actor"].startswith("worker:")
    assert ran["detail"]["outcome"] == "succeeded" and ran["detail"]["duration_ms"] >= 0
    assert ran["detail"]["arguments_sha256"] == first["arguments_sha256"]
    # Filters narrow; time bounds are unix seconds.
    assert {e["event"] for e in audit(gateway, session=approval["id"], event="decided")} == {
        "decided"
    }
    assert audit(gateway, session=approval["id"], since=str(time.time() + 60)) == []


def test_expiry_and_refusals_are_audited(make_stack: StackFactory) -> None:
    replica = make_stack(approval_timeout_s="1").replicas[0]
    held = HeldStream(replica.url, "use getStringLength on 'too late'")
    approval = held.wait_pending()
    tampered = [
        {
            "tool_call_id": approval["tool_calls"][0]["id"],
            "decision": "approve",
            "arguments_sha256": "f" * 64,
        }
    ]
    assert decide_calls(replica.url, approval["id"], tampered).status_code == 409
    held.wait()
    assert decide(replica.url, approval["id"], "approve").status_code == 410
    entries = audit(replica, session=approval["id"])
    refused = [e["detail"]["code"] for e in entries if e["event"] == "refused"]
    assert refused == ["hash_mismatch", "session_expired"]
    assert [e["event"] for e in entries].count("expired") == 1


def test_the_export_command_writes_json_lines(make_stack: StackFactory) -> None:
    stack = make_stack()
    replica = stack.replicas[0]
    held = HeldStream(replica.url, "use getStringLength on 'export'")
    approval = held.wait_pending()
    assert decide(replica.url, approval["id"], "approve").status_code == 200
    held.wait()
    exported = subprocess.run(
        [sys.executable, "-m", "gateway.audit_export", "export"],
        env=stack.env(),
        cwd=ROOT,
        capture_output=True,
        check=True,
        timeout=60,
    )
    lines = [orjson.loads(line) for line in exported.stdout.splitlines()]
    assert {e["event"] for e in lines} >= {"requested", "decided"}
    assert all(e["session"] == approval["id"] for e in lines if e["event"] == "requested")
    assert f"exported {len(lines)} audit entries" in exported.stderr.decode()


def test_an_approver_reads_its_own_tenant_and_an_admin_and_the_export_read_every_tenant(
    make_stack: StackFactory,
) -> None:
    api_keys = [
        {"sha256": hash_key(f"key-{name}"), "name": name, "tenant": tenant, "roles": roles}
        for name, (tenant, roles) in KEYS.items()
    ]
    stack = make_stack(api_keys=orjson.dumps(api_keys).decode())
    replica = stack.replicas[0]
    held = {
        tenant: HeldStream(
            replica.url, f"use getStringLength on '{tenant}'", f"key-{tenant}-requester"
        )
        for tenant in ("acme", "globex")
    }
    sessions = {tenant: stream.wait_pending()["id"] for tenant, stream in held.items()}

    def tenants_of(entries: list[dict[str, Any]]) -> dict[str, set[str]]:
        return {
            tenant: {e["session"] for e in entries if e["tenant"] == tenant}
            for tenant in {e["tenant"] for e in entries}
        }

    assert tenants_of(audit_as(replica, "acme-approver")) == {"acme": {sessions["acme"]}}
    # An approver naming another tenant still reads only its own.
    assert tenants_of(audit_as(replica, "acme-approver", tenant="globex")) == {
        "acme": {sessions["acme"]}
    }
    every = tenants_of(audit_as(replica, "root"))
    assert every == {"acme": {sessions["acme"]}, "globex": {sessions["globex"]}}
    assert tenants_of(audit_as(replica, "root", tenant="globex")) == {
        "globex": {sessions["globex"]}
    }
    exported = subprocess.run(
        [sys.executable, "-m", "gateway.audit_export", "export"],
        env=stack.env(),
        cwd=ROOT,
        capture_output=True,
        check=True,
        timeout=60,
    )
    lines = [orjson.loads(line) for line in exported.stdout.splitlines()]
    assert {e["tenant"] for e in lines} == {"acme", "globex"}
    for tenant, stream in held.items():
        assert decide(replica.url, sessions[tenant], "reject", key="key-root").status_code == 200
        stream.wait()
