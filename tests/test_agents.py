"""Unchanged agents get human approval of their own tools by pointing their base URL at the
gateway (issue 12, items 5 and 6).

Each agent (tests/agents_support.py) declares `send_email` and `delete_file`, runs them
itself, and is asked to use both in one turn. Under a policy whose `[client_default]` asks,
the gateway holds both calls in one approval session; a person approves send_email and
rejects delete_file, each decided after a hold past two default heartbeats. The agent must
then run send_email, with exactly the approved arguments, never run delete_file, and finally
say both what send_email returned and why delete_file was rejected. All agents run at once
on one stack, so the module takes about a minute.
"""

from __future__ import annotations

import secrets
from collections.abc import Iterator
from typing import Any

import openai
import pytest

from core.settings import Settings
from tests.agents_support import (
    TOOL_SCHEMAS,
    Agentic,
    HeldAgent,
    ToolRun,
    assistant_turn,
    js_tool_runner,
    langchain_agent,
    openai_agents_sdk,
    openai_tool_loop,
)
from tests.client_support import MODEL, Target, listed
from tests.clients import user
from tests.conftest import Stack
from tests.mediation import policy_file
from tests.processes import RedisServer

HEARTBEAT_S = float(Settings.model_fields["heartbeat_interval_s"].default)
HOLD_S = 41.0
"""Longer than two heartbeats at the default 15 s interval."""
CLIENT_POLICY = """
[client_default]
mode = "ask"
"""
"""Every call of a tool the client declared asks a person."""
AGENTS: dict[str, Agentic] = {
    "openai-tool-loop": openai_tool_loop,
    "openai-agents-sdk": openai_agents_sdk,
    "langchain-agent": langchain_agent,
    "js-tool-runner": js_tool_runner,
}
REJECTED_PATH = "/tmp/report.txt"


def email_body(agent: str) -> str:
    # Each agent mails its own text, so a call that crossed conversations would show.
    return f"quarterly numbers for {agent}"


def prompt(agent: str) -> str:
    return (
        f"use send_email on 'ann@corp.test' '{email_body(agent)}' "
        f"and use delete_file on '{REJECTED_PATH}'"
    )


def reason(agent: str) -> str:
    return f"not today, says {agent}"


@pytest.fixture(scope="module")
def agent_stack(
    redis_server: RedisServer, offline_model: str, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Stack]:
    """One replica and one worker, default heartbeats, the offline model, `CLIENT_POLICY`."""
    workdir = tmp_path_factory.mktemp("agents")
    settings = {"GATEWAY_POLICY_FILE": policy_file(workdir, CLIENT_POLICY)}
    stack = Stack(redis_server, offline_model, workdir, f"ag{secrets.token_hex(3)}", settings)
    try:
        stack.add_worker()
        stack.add_replica()
        yield stack
    finally:
        stack.stop()


@pytest.fixture(scope="module")
def held(agent_stack: Stack, tmp_path_factory: pytest.TempPathFactory) -> dict[str, HeldAgent]:
    """Every agent started at once, each decided `HOLD_S` after its approval opened, then
    run to its final answer."""
    assert "GATEWAY_HEARTBEAT_INTERVAL_S" not in agent_stack.env()
    assert HOLD_S > 2 * HEARTBEAT_S
    url = agent_stack.replicas[0].url
    workdir = tmp_path_factory.mktemp("agent-runs")
    run_id = secrets.token_hex(4)
    runs = {
        name: HeldAgent(
            agent=agent,
            target=Target(url, f"{name}-{run_id}", workdir),
            prompt=prompt(name),
            reason=reason(name),
        )
        for name, agent in AGENTS.items()
    }
    for run in runs.values():
        run.start()
    for run in runs.values():
        run.find_pending()
    for run in sorted(runs.values(), key=lambda r: r.listed[0]["created_at"] if r.listed else 0):
        run.decide_after(HOLD_S)
    for run in runs.values():
        run.join(timeout=90)
    return runs


def pending_calls(session: dict[str, Any]) -> list[tuple[str, dict[str, Any], str]]:
    return [(call["name"], call["arguments"], call["status"]) for call in session["tool_calls"]]


@pytest.mark.parametrize("agent", AGENTS)
def test_an_unchanged_agent_waits_for_a_person_to_decide_its_tool_calls(
    held: dict[str, HeldAgent], agent: str
) -> None:
    run = held[agent]
    assert len(run.listed) == 1, f"sessions under {run.target.label}: {run.listed} ({run.error!r})"
    session = run.listed[0]
    assert session["conversation_label"] == run.target.label
    assert pending_calls(session) == [
        ("send_email", {"to": "ann@corp.test", "body": email_body(agent)}, "pending"),
        ("delete_file", {"path": REJECTED_PATH}, "pending"),
    ]
    assert run.held_s >= HOLD_S and run.decision_status == 200
    assert run.finished_at > run.decided_at, "the agent finished before the person decided"
    # The agent's next request, carrying send_email's result, was answered, not held again.
    assert listed(run.target.base_url, conversation=run.target.label) == []


@pytest.mark.parametrize("agent", AGENTS)
def test_an_agent_runs_only_the_approved_call_and_hears_why_the_other_was_rejected(
    held: dict[str, HeldAgent], agent: str
) -> None:
    outcome = held[agent].got()

    approved = {"to": "ann@corp.test", "body": email_body(agent)}
    assert outcome.ran == [ToolRun("send_email", approved)]
    assert "send_email returned sent to ann@corp.test" in outcome.said
    rejection = f"The user rejected this tool call, so it was not run. Reason: {reason(agent)}"
    assert f"delete_file returned {rejection}" in outcome.said


def test_the_offline_model_calls_the_tools_a_client_declares_and_quotes_their_results(
    offline_model: str,
) -> None:
    """Item 6: the rule the agents rely on, asked of the offline model itself."""
    client = openai.OpenAI(base_url=offline_model, api_key="unused", max_retries=0, timeout=30)
    asked = user(prompt("model"))
    first = client.chat.completions.create(model=MODEL, messages=asked, tools=TOOL_SCHEMAS)

    choice = first.choices[0]
    calls = [call for call in choice.message.tool_calls or [] if call.type == "function"]
    assert choice.finish_reason == "tool_calls"
    assert [(call.function.name, call.function.arguments) for call in calls] == [
        ("send_email", '{"to":"ann@corp.test","body":"quarterly numbers for model"}'),
        ("delete_file", '{"path":"/tmp/report.txt"}'),
    ]
    send, delete = calls
    rejection = "The user rejected this tool call, so it was not run. Reason: not today"
    answered = client.chat.completions.create(
        model=MODEL,
        messages=[
            *asked,
            assistant_turn(None, calls),
            {"role": "tool", "tool_call_id": send.id, "content": "sent to ann@corp.test"},
            {"role": "tool", "tool_call_id": delete.id, "content": rejection},
        ],
        tools=TOOL_SCHEMAS,
    )

    assert answered.choices[0].message.content == (
        f"send_email returned sent to ann@corp.test and delete_file returned {rejection}."
    )
