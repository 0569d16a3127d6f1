"""Server-side tools: LangChain tools loaded from a configured `module:attribute`.

The gateway uses them for their schemas, the workers to run them, so both
share one definition. A tool may carry `metadata` keys the gateway reads:
`read_only` (runs without approval unless policy says otherwise),
`idempotent`, `timeout_s` and `untrusted_output` (its results may carry text the
model should not obey); a policy rule's fields of the same names win.
"""

from __future__ import annotations

import importlib
from collections.abc import Iterable, Mapping
from typing import Any

import structlog
from langchain_core.tools import BaseTool
from langchain_core.utils.function_calling import convert_to_openai_tool

from core.arguments import ArgumentChecker
from core.policy import Policy, Side, ToolRule, Verdict, policy_from_settings
from core.settings import PolicyMode, Settings

log = structlog.stdlib.get_logger(__name__)

# Rule fields that override the tool's metadata of the same name.
_RULE_METADATA = ("read_only", "idempotent", "timeout_s", "untrusted_output")


class ToolBox:
    """The server-side tools by name, with their OpenAI schemas and the policy over them."""

    def __init__(self, tools: Iterable[BaseTool], policy: Policy) -> None:
        self.tools = {tool.name: tool for tool in tools}
        self.policy = policy
        self.schemas = [convert_to_openai_tool(tool) for tool in self.tools.values()]
        # The schema the model is offered is the one its arguments must fit, strictly (it
        # leaves out parameters LangChain injects, so the model can never set those).
        self.checkers = {
            schema["function"]["name"]: ArgumentChecker(schema["function"]["parameters"])
            for schema in self.schemas
        }
        if unknown := sorted(set(policy.tools) - set(self.tools)):
            # Harmless (unknown tools are denied), but often a typo in a tool name.
            log.warning("policy_names_unknown_tools", tools=unknown)

    @classmethod
    def from_settings(cls, settings: Settings) -> ToolBox:
        """The configured tools under the configured policy (`policy_file`, then `tool_policy`)."""
        return cls(load_tools(settings.tools), policy_from_settings(settings))

    def __contains__(self, name: object) -> bool:
        return name in self.tools

    def rule(self, name: str) -> ToolRule:
        """The policy rule for a tool: its own, or the default rule (for a name that is no
        server-side tool: the client rule, or the client default)."""
        return self.policy.rule_for(name, "server" if name in self.tools else "client")

    def verdict(
        self,
        name: str,
        arguments: Mapping[str, Any],
        *,
        untrusted_context: bool = False,
        side: Side = "server",
    ) -> Verdict:
        """A call's mode and why (precedence in docs/policy.md). `untrusted_context`: the
        conversation already holds output of an untrusted tool; `side`: a client-declared
        tool is judged by the client rules."""
        read_only = side == "server" and bool(self._tool_metadata(name).get("read_only"))
        return self.policy.verdict(
            name,
            arguments,
            read_only_tool=read_only,
            untrusted_context=untrusted_context,
            side=side,
        )

    def mode_for(self, name: str, arguments: Mapping[str, Any] | None = None) -> PolicyMode:
        """A call's mode (precedence in docs/policy.md); `ask_when` turns `auto` into `ask`."""
        return self.verdict(name, arguments or {}).mode

    def check_arguments(self, name: str, arguments: object) -> dict[str, Any]:
        """The call's arguments if they fit the tool's schema strictly (`ArgumentError`)."""
        return self.checkers[name].check(arguments)

    def untrusted_output(self, name: str) -> bool:
        """Whether the tool's results may carry text the model should not obey; a tool
        that is not loaded (a client's) takes its rule, or the default rule."""
        return bool(self.metadata(name).get("untrusted_output"))

    def read_only(self, name: str) -> bool:
        """Whether the tool changes nothing (its metadata, or its rule's override)."""
        return bool(self.metadata(name).get("read_only"))

    def metadata(self, name: str) -> Mapping[str, Any]:
        """The tool's metadata with the rule's `read_only`, `idempotent` and `timeout_s` over it."""
        rule = self.rule(name)
        overrides = {key: getattr(rule, key) for key in _RULE_METADATA}
        return {
            **self._tool_metadata(name),
            **{key: value for key, value in overrides.items() if value is not None},
        }

    def idempotent(self, name: str) -> bool:
        """Whether a call may run again after its worker died; false for unknown tools."""
        return name in self.tools and bool(self.metadata(name).get("idempotent"))

    def timeout_s(self, name: str, default: float) -> float:
        """How long one call may run: the rule's, else the tool's metadata, else `default`."""
        return float(self.metadata(name).get("timeout_s", default))

    def editable(self, name: str) -> bool:
        """Whether an approver may change the call's arguments before approving."""
        return self.rule(name).editable

    def approvers(self, name: str) -> list[str]:
        """The roles that may decide the tool's calls."""
        return list(self.rule(name).approvers)

    def _tool_metadata(self, name: str) -> Mapping[str, Any]:
        tool = self.tools.get(name)
        return (tool.metadata or {}) if tool is not None else {}


def load_tools(spec: str) -> list[BaseTool]:
    """Import `module:attribute`, a sequence of LangChain tools."""
    module_name, _, attribute = spec.partition(":")
    if not attribute:
        raise ValueError(f"tools must be 'module:attribute', got {spec!r}")
    tools = getattr(importlib.import_module(module_name), attribute)
    if not all(isinstance(tool, BaseTool) for tool in tools):
        raise TypeError(f"{spec} must be a sequence of LangChain tools")
    return list(tools)
