"""Tools the tests offer the model, next to the example ones."""

from __future__ import annotations

import time
from pathlib import Path

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


@tool
def chargeCard(ledger: str, entry: str, seconds: float) -> str:  # noqa: N802
    """Append an entry to a ledger file, taking `seconds`; not idempotent."""
    return _append_slowly(ledger, entry, seconds)


@tool
def recordMetric(ledger: str, entry: str, seconds: float) -> str:  # noqa: N802
    """Append an entry to a ledger file, taking `seconds`; safe to repeat."""
    return _append_slowly(ledger, entry, seconds)


def _append_slowly(ledger: str, entry: str, seconds: float) -> str:
    # The ledger records every start, so a second run of the same call is visible.
    with Path(ledger).open("a", encoding="utf-8") as file:
        file.write(f"start {entry}\n")
    time.sleep(seconds)
    with Path(ledger).open("a", encoding="utf-8") as file:
        file.write(f"end {entry}\n")
    return f"recorded {entry}"


recordMetric.metadata = {"idempotent": True}
TOOLS: list[BaseTool] = [*EXAMPLE_TOOLS, explode, forbiddenTool, chargeCard, recordMetric]
