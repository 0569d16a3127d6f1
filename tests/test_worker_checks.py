"""The worker re-checks every job: the session's call under that id, its approved hash, its
schema and the worker's own policy must all agree, or the call is refused and audited."""

from __future__ import annotations

import threading
from pathlib import Path
from typing import Any

import orjson

from core.keys import Keys
from tests.clients import HeldStream, StreamResult
from tests.conftest import Stack, StackFactory
from tests.hostile import HostileUpstream, call, turn
from tests.mediation import audit_events, policy_file, wait_for
from tests.redis_state import consumer_of, job_settled
from tests.scrape import scrape
from tests.tools import MEDIATION_POLICY, ledger_entries

EXECUTIONS = "approval_gateway_worker_tool_executions_total"
"""The worker's count of jobs handled, by tool and outcome (worker/metrics.py)."""

# The gateway's policy lets greet run unasked; these are what a worker may have instead.
WORKER_DENIES = MEDIATION_POLICY.replace(
    '[tools.greet]\nmode = "auto"', '[tools.greet]\nmode = "deny"'
)
WORKER_ASKS = MEDIATION_POLICY.replace(
    '[tools.greet]\nmode = "auto"', '[tools.greet]\nmode = "ask"'
)


def stack_without_worker(
    make_stack: StackFactory, hostile: HostileUpstream, tmp_path: Path
) -> Stack:
    gateway_policy = policy_file(tmp_path, MEDIATION_POLICY)
    return make_stack(workers=0, upstream=hostile.url, policy_file=gateway_policy)


def add_worker_with_policy(stack: Stack, tmp_path: Path, policy: str) -> None:
    folder = tmp_path / "worker-policy"
    folder.mkdir()
    stack.overrides["GATEWAY_POLICY_FILE"] = policy_file(folder, policy)
    stack.add_worker()


def chat_in_background(url: str, prompt: str) -> tuple[threading.Thread, list[StreamResult]]:
    results: list[StreamResult] = []
    held = HeldStream(url, prompt)
    thread = threading.Thread(target=lambda: results.append(held.wait(60)))
    thread.start()
    return thread, results


def greet_session(stack: Stack, hostile: HostileUpstream, ledger: Path) -> tuple[str, Any]:
    """Start a chat whose greet call the gateway approves by policy and queues; no worker
    has taken it yet. Returns the marker and the background reader."""
    marker = hostile.script(turn(call("greet", {"ledger": str(ledger), "name": "ann"})))
    return marker, chat_in_background(stack.replicas[0].url, marker)


def assert_refused_by_the_worker(stack: Stack, reason: str) -> None:
    """The stack's one worker took the stack's one job, refused it for `reason`, audited the
    refusal under its own name, counted it, and acknowledged the job (its last step)."""
    jobs: list[tuple[str, dict[str, str]]] = stack.redis.client().xrange(stack.keys.jobs)  # type: ignore[assignment]
    [(entry_id, job)] = jobs
    assert wait_for(lambda: job_settled(stack, entry_id)), "the worker did not settle the job"
    [worker] = stack.workers
    entries = audit_events(stack.replicas[0].url, job["session_id"])
    [refused] = [e for e in entries if e["event"] == "run_refused"]
    assert refused["actor"] == f"worker:{consumer_of(worker)}"
    assert refused["detail"]["reason"] == reason
    assert not [e for e in entries if e["event"] == "executed"]
    samples = scrape(f"http://127.0.0.1:{stack.worker_ports[0]}")
    refusals = (EXECUTIONS, frozenset({("tool", "greet"), ("outcome", "refused")}))
    assert samples.get(refusals) == 1


def test_a_worker_whose_policy_denies_the_tool_refuses_the_job(
    make_stack: StackFactory, hostile_upstream: HostileUpstream, tmp_path: Path
) -> None:
    stack = stack_without_worker(make_stack, hostile_upstream, tmp_path)
    ledger = tmp_path / "ledger.jsonl"
    _, (reader, results) = greet_session(stack, hostile_upstream, ledger)
    add_worker_with_policy(stack, tmp_path, WORKER_DENIES)
    reader.join(60)
    assert not reader.is_alive(), "the chat did not end"
    [result] = results
    [error] = result.events_of("error")
    assert "refused by the worker: policy denies this call" in error["content"]
    assert_refused_by_the_worker(stack, "policy denies this call")
    assert ledger_entries(ledger) == []  # the job is settled: the tool never ran


def test_a_worker_whose_policy_asks_refuses_a_call_only_policy_approved(
    make_stack: StackFactory, hostile_upstream: HostileUpstream, tmp_path: Path
) -> None:
    stack = stack_without_worker(make_stack, hostile_upstream, tmp_path)
    ledger = tmp_path / "ledger.jsonl"
    _, (reader, results) = greet_session(stack, hostile_upstream, ledger)
    add_worker_with_policy(stack, tmp_path, WORKER_ASKS)
    reader.join(60)
    assert not reader.is_alive(), "the chat did not end"
    [error] = results[0].events_of("error")
    assert "a person must decide this call" in error["content"]
    assert_refused_by_the_worker(stack, "policy says a person must decide this call, and none did")
    assert ledger_entries(ledger) == []  # the job is settled: the tool never ran


def test_arguments_changed_in_redis_after_the_decision_never_run(
    make_stack: StackFactory, hostile_upstream: HostileUpstream, tmp_path: Path
) -> None:
    stack = stack_without_worker(make_stack, hostile_upstream, tmp_path)
    ledger = tmp_path / "ledger.jsonl"
    _, (reader, results) = greet_session(stack, hostile_upstream, ledger)
    redis, keys = stack.redis.client(), Keys(stack.prefix)
    jobs = wait_for(lambda: redis.xrange(keys.jobs))
    session_key = keys.session(jobs[0][1]["session_id"])
    calls = orjson.loads(redis.hget(session_key, "calls"))  # type: ignore[arg-type]
    calls[0]["arguments"]["name"] = "mallory"  # what was approved was "ann"
    redis.hset(session_key, "calls", orjson.dumps(calls).decode())
    add_worker_with_policy(stack, tmp_path, MEDIATION_POLICY)
    reader.join(60)
    assert not reader.is_alive(), "the chat did not end"
    [error] = results[0].events_of("error")
    assert "not the ones that were approved" in error["content"]
    assert_refused_by_the_worker(stack, "the arguments are not the ones that were approved")
    assert ledger_entries(ledger) == []  # the job is settled: the tool never ran
