"""Each worker serves `/healthz` and `/metrics` on its own port: health follows its loop and
Redis, and every job it handles is counted once, under a bounded tool label and its outcome."""

from __future__ import annotations

from typing import Any

import httpx

from tests.clients import consume, decide, stream_chat
from tests.conftest import Replica, Stack, StackFactory
from tests.mediation import wait_for
from tests.processes import RedisServer, wait_http
from tests.scrape import Samples, scrape

EXECUTIONS = "approval_gateway_worker_tool_executions_total"
DURATION_COUNT = "approval_gateway_worker_tool_duration_seconds_count"
REDIS_ERRORS = "approval_gateway_worker_redis_errors_total"


def worker_url(stack: Stack, index: int = 0) -> str:
    return f"http://127.0.0.1:{stack.worker_ports[index]}"


def healthy_worker(stack: Stack, index: int = 0) -> str:
    """The worker's base URL, once its /healthz says it consumes."""
    url = worker_url(stack, index)
    wait_http(f"{url}/healthz", stack.workers[index])
    return url


def value(samples: Samples, name: str, **labels: str) -> float:
    return samples.get((name, frozenset(labels.items())), 0.0)


def chat_approving(replica: Replica, prompt: str) -> dict[str, Any]:
    """Chat, approve the one call the model asks for, read to the end; that call as stored."""

    def approve(approval: dict[str, Any]) -> None:
        assert decide(replica.url, approval["id"], "approve").status_code == 200

    seen = consume(stream_chat(replica.url, prompt), on_approval=approve)
    [notice] = seen.approvals
    [call] = httpx.get(f"{replica.url}/v1/approvals/{notice['id']}").json()["tool_calls"]
    return dict(call)


def test_a_running_worker_is_healthy_and_up(make_stack: StackFactory) -> None:
    stack = make_stack(replicas=0, worker__name="probe-me")
    url = healthy_worker(stack)
    health = httpx.get(f"{url}/healthz", timeout=5)
    assert health.status_code == 200
    assert health.json() == {"status": "ok", "worker": "probe-me"}
    samples = scrape(url)
    assert value(samples, "approval_gateway_worker_up") == 1
    assert value(samples, "approval_gateway_worker_last_loop_timestamp_seconds") > 0
    assert value(samples, "approval_gateway_worker_jobs_in_flight") == 0
    assert httpx.get(f"{url}/nope", timeout=5).status_code == 404


def test_each_call_that_ran_is_counted_once_with_its_outcome_and_duration(
    make_stack: StackFactory,
) -> None:
    stack = make_stack()
    url = healthy_worker(stack)
    before = scrape(url)
    ok = chat_approving(stack.replicas[0], "getStringLength of 'abc'")
    failed = chat_approving(stack.replicas[0], "explode with 'boom'")
    after = scrape(url)
    assert (ok["status"], failed["status"]) == ("succeeded", "failed")

    def delta(name: str, **labels: str) -> float:
        return value(after, name, **labels) - value(before, name, **labels)

    assert delta(EXECUTIONS, tool="getStringLength", outcome="succeeded") == 1
    assert delta(EXECUTIONS, tool="explode", outcome="failed") == 1
    assert delta(DURATION_COUNT, tool="getStringLength") == 1
    assert delta(DURATION_COUNT, tool="explode") == 1
    changed = {key for key in after if after[key] != before.get(key, 0.0)}
    counted = {key for key in changed if key[0] == EXECUTIONS}
    assert len(counted) == 2, counted  # no other outcome moved


def test_a_call_of_a_tool_the_worker_lacks_is_refused_under_the_label_other(
    make_stack: StackFactory,
) -> None:
    stack = make_stack(workers=0)
    stack.overrides["GATEWAY_TOOLS"] = "examples.tools:TOOLS"  # no `explode` on this worker
    stack.add_worker()
    url = healthy_worker(stack)
    call = chat_approving(stack.replicas[0], "explode with 'boom'")
    assert call["status"] == "failed"
    assert "this worker has no tool named 'explode'" in call["result"]["content"]
    samples = scrape(url)
    assert value(samples, EXECUTIONS, tool="other", outcome="refused") == 1
    assert value(samples, DURATION_COUNT, tool="other") == 0  # nothing ran
    assert not any(dict(labels).get("tool") == "explode" for _, labels in samples)


def test_health_is_503_while_redis_is_frozen_and_200_once_it_answers(
    make_stack: StackFactory, private_redis: RedisServer
) -> None:
    # Redis may stay quiet for max(block 0.5 s, upkeep 0.5 s) + the 1 s call bound.
    stack = make_stack(
        replicas=0, redis=private_redis, redis_timeout_s="1", worker__claim_idle_ms="1500"
    )
    url = healthy_worker(stack)
    private_redis.freeze()
    try:
        unhealthy = wait_for(lambda: httpx.get(f"{url}/healthz", timeout=5).status_code == 503)
        assert unhealthy
        body = httpx.get(f"{url}/healthz", timeout=5).json()
        assert body["status"] == "unavailable" and "Redis has not answered" in body["reason"]
        assert wait_for(lambda: value(scrape(url), REDIS_ERRORS) > 0)
    finally:
        private_redis.thaw()
    assert wait_for(lambda: httpx.get(f"{url}/healthz", timeout=5).status_code == 200)
    assert value(scrape(url), "approval_gateway_worker_up") == 1
