"""Agents people build, each unchanged but for its base URL (and a label header): a plain
`openai` SDK tool loop, the OpenAI Agents SDK, a LangChain v1 agent and the openai JS SDK's
tool runner.

Every agent declares the same two tools of its own, `send_email(to, body)` and
`delete_file(path)`, and runs them itself. They mail and delete nothing: each records that it
ran and with what, so a test can tell which calls reached the agent. What an agent did is an
`AgentOutcome`: the tools it ran and what it finally said.
"""

from __future__ import annotations

import asyncio
import json
import shutil
import subprocess
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import openai
from agents import Agent, OpenAIChatCompletionsModel, RunConfig, Runner, function_tool
from langchain.agents import create_agent
from langchain_core.tools import tool
from openai.types.chat import ChatCompletionMessageParam, ChatCompletionToolParam

from tests.client_support import LABEL_HEADER, MODEL, HeldRun, Target, langchain_model, openai_sdk
from tests.clients import decide_calls, user

JS_DIR = Path(__file__).resolve().parent / "js"
MAX_ROUNDS = 5
"""Model requests an agent may make before the test calls it a runaway loop."""


@dataclass(frozen=True)
class ToolRun:
    """One run of an agent's own tool, with the arguments it got."""

    name: str
    arguments: dict[str, Any]


@dataclass
class AgentOutcome:
    """What an agent did: the tools it ran, in order, and its final answer."""

    ran: list[ToolRun]
    said: str


Agentic = Callable[[Target, str], AgentOutcome]
"""Run an agent on a prompt against the target gateway, to its final answer."""


class AgentTools:
    """The tools an agent declares and runs itself, recording each run instead of acting."""

    def __init__(self) -> None:
        self.ran: list[ToolRun] = []

    def send_email(self, to: str, body: str) -> str:
        """Send an email."""
        self.ran.append(ToolRun("send_email", {"to": to, "body": body}))
        return f"sent to {to}"

    def delete_file(self, path: str) -> str:
        """Delete a file."""
        self.ran.append(ToolRun("delete_file", {"path": path}))
        return f"deleted {path}"

    def call(self, name: str, arguments_json: str) -> str:
        """Run a tool by name on the model's JSON arguments, as a hand-written loop does."""
        arguments = json.loads(arguments_json)
        if name == "send_email":
            return self.send_email(**arguments)
        if name == "delete_file":
            return self.delete_file(**arguments)
        return f"no tool named {name}"


def _function(name: str, description: str, *parameters: str) -> ChatCompletionToolParam:
    properties = {parameter: {"type": "string"} for parameter in parameters}
    schema: dict[str, object] = {
        "type": "object",
        "properties": properties,
        "required": list(parameters),
    }
    return {
        "type": "function",
        "function": {"name": name, "description": description, "parameters": schema},
    }


TOOL_SCHEMAS = [
    _function("send_email", "Send an email.", "to", "body"),
    _function("delete_file", "Delete a file.", "path"),
]
"""`AgentTools` as a plain SDK user declares them, by hand."""


class AgentFailed(Exception):
    """An agent gave up: a runaway loop, or its program exited with an error."""


def assistant_turn(content: str | None, calls: list[Any]) -> ChatCompletionMessageParam:
    """An assistant message with these SDK tool calls, to send back as history."""
    return {
        "role": "assistant",
        "content": content,
        "tool_calls": [
            {
                "id": call.id,
                "type": "function",
                "function": {"name": call.function.name, "arguments": call.function.arguments},
            }
            for call in calls
        ],
    }


def openai_tool_loop(target: Target, prompt: str) -> AgentOutcome:
    """The `openai` SDK's own loop: create, run the tool calls, append their results, repeat."""
    tools = AgentTools()
    client = openai_sdk(target)
    messages: list[ChatCompletionMessageParam] = user(prompt)
    for _ in range(MAX_ROUNDS):
        completion = client.chat.completions.create(
            model=MODEL, messages=messages, tools=TOOL_SCHEMAS
        )
        message = completion.choices[0].message
        calls = [call for call in message.tool_calls or [] if call.type == "function"]
        if not calls:
            return AgentOutcome(tools.ran, message.content or "")
        messages.append(assistant_turn(message.content, calls))
        for call in calls:
            result = tools.call(call.function.name, call.function.arguments)
            messages.append({"role": "tool", "tool_call_id": call.id, "content": result})
    raise AgentFailed(f"still calling tools after {MAX_ROUNDS} rounds: {tools.ran}")


def openai_agents_sdk(target: Target, prompt: str) -> AgentOutcome:
    """The OpenAI Agents SDK: function tools, its Chat Completions model on the gateway."""
    tools = AgentTools()

    async def run() -> str:
        async with openai.AsyncOpenAI(
            base_url=f"{target.base_url}/v1",
            api_key="unused",
            default_headers={LABEL_HEADER: target.label},
        ) as client:
            agent: Agent[None] = Agent(
                name="assistant",
                tools=[function_tool(tools.send_email), function_tool(tools.delete_file)],
                model=OpenAIChatCompletionsModel(model=MODEL, openai_client=client),
            )
            # Per run rather than the SDK's global switch: nothing to export traces to.
            config = RunConfig(tracing_disabled=True)
            result = await Runner.run(agent, prompt, run_config=config, max_turns=MAX_ROUNDS)
            return str(result.final_output)

    said = asyncio.run(run())
    return AgentOutcome(tools.ran, said)


def langchain_agent(target: Target, prompt: str) -> AgentOutcome:
    """LangChain v1's `create_agent` with `@tool` tools and `ChatOpenAI` on the gateway."""
    tools = AgentTools()
    agent = create_agent(
        langchain_model(target), tools=[tool(tools.send_email), tool(tools.delete_file)]
    )
    state = agent.invoke({"messages": [{"role": "user", "content": prompt}]})
    return AgentOutcome(tools.ran, state["messages"][-1].text)


def js_tool_runner(target: Target, prompt: str) -> AgentOutcome:
    """The openai JS SDK's `chat.completions.runTools`, streamed (tests/js/tool_runner.mjs)."""
    node = shutil.which("node")
    if node is None:
        raise AgentFailed("node is not installed (`make js-deps` installs it)")
    argv = [
        node, str(JS_DIR / "tool_runner.mjs"), target.base_url, prompt,
        "--header", f"{LABEL_HEADER}: {target.label}", "--stream",
    ]  # fmt: skip
    done = subprocess.run(
        argv, cwd=JS_DIR, capture_output=True, text=True, timeout=240, check=False
    )
    events = [json.loads(line) for line in done.stdout.splitlines() if line.startswith("{")]
    summaries = [event for event in events if event["event"] == "summary"]
    if done.returncode != 0 or not summaries:
        raise AgentFailed(f"tool_runner.mjs exited {done.returncode}:\n{done.stdout}{done.stderr}")
    ran = [ToolRun(e["name"], e["arguments"]) for e in events if e["event"] == "tool_ran"]
    return AgentOutcome(ran, summaries[-1]["text"])


def verdicts(session: dict[str, Any], reason: str) -> list[dict[str, Any]]:
    """The person's per-call decision: approve every send_email, reject everything else."""
    return [
        {"tool_call_id": call["id"], "decision": "approve"}
        if call["name"] == "send_email"
        else {"tool_call_id": call["id"], "decision": "reject", "reason": reason}
        for call in session["tool_calls"]
    ]


@dataclass(kw_only=True)
class HeldAgent(HeldRun[AgentOutcome]):
    """One agent, whose calls the person decides with `verdicts` (`reason`: why it rejects)."""

    agent: Agentic
    prompt: str

    def work(self) -> AgentOutcome:
        return self.agent(self.target, self.prompt)

    def decision(self, session: dict[str, Any]) -> httpx.Response:
        calls = verdicts(session, self.reason)
        return decide_calls(self.target.base_url, session["id"], calls)
