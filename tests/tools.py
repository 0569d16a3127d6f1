"""Tools the tests offer the model, next to the example ones."""

from __future__ import annotations

from langchain_core.tools import BaseTool, tool

from examples.tools import TOOLS as EXAMPLE_TOOLS


@tool
def explode(reason: str) -> str:
    """Fail on purpose with the given reason."""
    raise RuntimeError(f"exploded: {reason}")


@tool
def forbiddenTool(target: str) -> str:  # noqa: N802 - tool names are the model's vocabulary
    """A tool that policy denies in the tests."""
    return f"should never run on {target}"


TOOLS: list[BaseTool] = [*EXAMPLE_TOOLS, explode, forbiddenTool]
