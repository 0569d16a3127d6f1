"""`GET /metrics` on a real replica: what an approve and a reject of held streams move."""

from __future__ import annotations

import re
import time
from collections.abc import Callable
from pathlib import Path

import httpx
import orjson

from gateway.auth import hash_key
from gateway.metrics import Metrics
from tests.clients import HeldStream, decide
from tests.conftest import Replica, StackFactory
from tests.scrape import Samples
from tests.scrape import scrape as scrape_url

PROMPT = "Please use getStringLength on 'ab'"
DECISION_ROUTE = {"route": "/v1/approvals/{session_id}/decision", "method": "POST"}
KEYS = {"alice": ("key-alice", ["requester"]), "bob": ("key-bob", ["approver"])}


def api_keys_setting() -> str:
    keys = [
        {"sha256": hash_key(key), "name": name, "tenant": "acme", "roles": roles}
        for name, (key, roles) in KEYS.items()
    ]
    return orjson.dumps(keys).decode()


def scrape(replica: Replica) -> Samples:
    """Every sample of the replica's `/metrics`."""
    return scrape_url(replica.url)


def value(samples: Samples, name: str, **labels: str) -> float:
    """The sum of `name`'s samples whose labels include `labels` (0 when there is none)."""
    wanted = set(labels.items())
    return sum(v for (n, have), v in samples.items() if n == name and wanted <= have)


def poll(replica: Replica, holds: Callable[[Samples], bool], timeout: float = 10) -> Samples:
    deadline = time.monotonic() + timeout
    while True:
        samples = scrape(replica)
        if holds(samples) or time.monotonic() > deadline:
            return samples
        time.sleep(0.1)


def held_cycle(replica: Replica, decision: str, pending_before: float) -> None:
    """A held streamed chat whose call is pending (and counted so), then decided by bob."""
    held = HeldStream(replica.url, PROMPT, api_key=KEYS["alice"][0])
    session = held.wait_pending()
    pending = "approval_gateway_pending_approvals"
    labels = {"tenant": "acme", "tool": "getStringLength"}
    seen = poll(replica, lambda s: value(s, pending, **labels) == pending_before + 1)
    assert value(seen, pending, **labels) == pending_before + 1
    response = decide(replica.url, session["id"], decision, "metrics test", key=KEYS["bob"][0])
    assert response.status_code == 200
    result = held.wait()
    assert result.finish_reason == "stop"


def test_an_approve_and_a_reject_move_the_metrics_by_exactly_what_happened(
    make_stack: StackFactory,
) -> None:
    replica = make_stack(api_keys=api_keys_setting()).replicas[0]
    assert httpx.get(f"{replica.url}/v1/approvals").status_code == 401  # the API needs a key
    before = scrape(replica)
    pending = "approval_gateway_pending_approvals"
    pending_before = value(before, pending)
    held_before = value(before, "approval_gateway_held_streams")

    held_cycle(replica, "approve", pending_before)
    held_cycle(replica, "reject", pending_before)

    after = poll(
        replica,
        lambda s: (
            value(s, "approval_gateway_held_streams") == held_before
            and value(s, pending) == pending_before
        ),
    )

    def moved(name: str, **labels: str) -> float:
        return value(after, name, **labels) - value(before, name, **labels)

    decisions = "approval_gateway_decisions_total"
    assert moved(decisions, decision="approve", actor_type="person") == 1
    assert moved(decisions, decision="reject", actor_type="person") == 1
    assert moved("approval_gateway_approval_wait_seconds_count") == 2
    assert moved("approval_gateway_approval_wait_seconds_count", decision="approve") == 1
    assert moved("approval_gateway_resume_seconds_count") == 2
    http = "approval_gateway_http_requests_total"
    assert moved(http, **DECISION_ROUTE, status="200") == 2
    assert moved(http, **DECISION_ROUTE) == 2
    assert moved(http, route="/v1/chat/completions", method="POST", status="200") == 2
    assert value(after, "approval_gateway_held_streams") == held_before
    assert value(after, pending) == pending_before
    assert value(after, pending, tenant="acme", tool="getStringLength") == 0  # kept, at zero
    # Each chat: a turn that asks for the call, then the model's answer after it.
    assert moved("approval_gateway_upstream_duration_seconds_count") == 4
    assert moved("approval_gateway_upstream_time_to_first_token_seconds_count") == 4
    assert moved("approval_gateway_upstream_errors_total") == 0
    assert moved("approval_gateway_run_log_writes_total") >= 2
    assert moved("approval_gateway_lease_takeovers_total") == 0
    assert moved("approval_gateway_redis_errors_total") == 0


def test_label_values_are_bounded(make_stack: StackFactory) -> None:
    replica = make_stack(api_keys=api_keys_setting()).replicas[0]
    held_cycle(replica, "approve", 0)
    httpx.get(f"{replica.url}/v1/approvals/as_0123/stream")  # a path holding an id
    httpx.get(f"{replica.url}/no/such/path")
    samples = scrape(replica)
    values = {v for _, labels in samples for _, v in labels}
    assert not [v for v in values if "as_" in v or v.startswith("/no/")]
    routes = {v for _, labels in samples for k, v in labels if k == "route"}
    assert {"/v1/approvals/{session_id}/stream", "unmatched", "/metrics"} <= routes
    tenants = {v for _, labels in samples for k, v in labels if k == "tenant"}
    assert tenants == {"acme"}


def test_the_balancer_does_not_pass_metrics_on(make_stack: StackFactory) -> None:
    stack = make_stack()
    balancer = stack.add_nginx()
    response = httpx.get(f"{balancer}/metrics")
    assert response.status_code == 404 and response.json()["error"]["code"] == "not_found"
    assert httpx.get(f"{stack.replicas[0].url}/metrics").status_code == 200


def test_the_docs_and_the_dashboard_name_the_metrics_there_are() -> None:
    root = Path(__file__).resolve().parent.parent
    exposed = {
        f"{family.name}_total" if family.type == "counter" else family.name
        for family in Metrics().registry.collect()
    }
    doc = (root / "docs" / "metrics.md").read_text()
    table = doc.split("## The gateway's metrics", 1)[1].split("\n## ", 1)[0]
    documented = set(re.findall(r"^\| `(approval_gateway_\w+)`", table, re.MULTILINE))
    dashboard = (root / "deploy" / "grafana-dashboard.json").read_text()
    charted = set(re.findall(r"(approval_gateway_\w+?)(?:_bucket)?\b", dashboard))
    assert documented == exposed
    assert charted and charted <= exposed
