"""Server-side tools: LangChain tools loaded from a configured `module:attribute`.

The gateway uses them for their schemas, the workers to run them, so both
share one definition. A tool may carry `metadata` keys the gateway reads:
`read_only` (runs without approval unless policy says otherwise),
`idempotent`, and `timeout_s`.
"""

from __future__ import annotations

import importlib
from collections.abc import Iterable, Mapping
from typing import Any

from langchain_core.tools import BaseTool
from langchain_core.utils.function_calling import convert_to_openai_tool

from core.settings import PolicyMode


class ToolBox:
    """The server-side tools by name, with their OpenAI schemas and policy."""

    def __init__(self, tools: Iterable[BaseTool], policy: Mapping[str, PolicyMode]) -> None:
        self.tools = {tool.name: tool for tool in tools}
        self.policy = dict(policy)
        self.schemas = [convert_to_openai_tool(tool) for tool in self.tools.values()]

    def __contains__(self, name: object) -> bool:
        return name in self.tools

    def mode_for(self, name: str) -> PolicyMode:
        """The policy for a call: configured, else `auto` for read-only tools, else `ask`."""
        if name in self.policy:
            return self.policy[name]
        return PolicyMode.AUTO if self.metadata(name).get("read_only") else PolicyMode.ASK

    def metadata(self, name: str) -> Mapping[str, Any]:
        return self.tools[name].metadata or {}


def load_tools(spec: str) -> list[BaseTool]:
    """Import `module:attribute`, a sequence of LangChain tools."""
    module_name, _, attribute = spec.partition(":")
    if not attribute:
        raise ValueError(f"tools must be 'module:attribute', got {spec!r}")
    tools = getattr(importlib.import_module(module_name), attribute)
    if not all(isinstance(tool, BaseTool) for tool in tools):
        raise TypeError(f"{spec} must be a sequence of LangChain tools")
    return list(tools)
