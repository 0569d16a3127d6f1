"""Running one tool call: bounded in time and in result size; exceptions become results."""

from __future__ import annotations

import asyncio
import time
from typing import Any

import orjson
from langchain_core.tools import BaseTool

from core.records import ToolResult


async def run_tool(
    tool: BaseTool, arguments: dict[str, Any], timeout_s: float, max_bytes: int, worker: str
) -> ToolResult:
    """Run a tool (sync tools in a thread) and describe what happened.

    `arun` with the checked arguments, never `ainvoke`: `ainvoke` would take arguments
    shaped `{"type": "tool_call", "args": ...}` as an envelope and run the inner ones.
    """
    started = time.perf_counter()
    try:
        async with asyncio.timeout(timeout_s):
            output = await tool.arun(arguments)
        status, content = "succeeded", _as_text(output)
    except TimeoutError:
        status, content = "failed", f"the tool did not finish within {timeout_s:g} s"
    except (
        Exception
    ) as error:  # a tool's failure is the model's information, never the worker's crash
        status, content = "failed", f"{type(error).__name__}: {error}"
    return ToolResult(
        status=status,  # type: ignore[arg-type]
        content=_truncate(content, max_bytes),
        worker=worker,
        duration_ms=round((time.perf_counter() - started) * 1000, 3),
    )


def _as_text(output: Any) -> str:
    if isinstance(output, str):
        return output
    return orjson.dumps(output, default=str).decode()


def _truncate(text: str, max_bytes: int) -> str:
    encoded = text.encode()
    if len(encoded) <= max_bytes:
        return text
    marker = f" [truncated: {len(encoded)} bytes]"
    return encoded[: max_bytes - len(marker)].decode(errors="ignore") + marker
