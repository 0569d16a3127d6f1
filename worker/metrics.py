"""What one worker counts, in a registry of its own, for `GET /metrics` (Prometheus text).

Label values are bounded: a tool label is a configured tool's name or `other` (a job names
its tool as the stream says it), an outcome is an `ExecutionOutcome`. No session ids.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from enum import StrEnum

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest

PREFIX = "approval_gateway_worker_"
OTHER_TOOL = "other"
"""The tool label of a job naming a tool this worker does not have."""
DURATION_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120)
"""Seconds: from a lookup to a call at a generous `tool_timeout_s`."""


class ExecutionOutcome(StrEnum):
    """What became of one job's call on this worker."""

    SUCCEEDED = "succeeded"
    """The tool ran and returned."""
    FAILED = "failed"
    """The tool ran and raised, or did not finish within its timeout."""
    REFUSED = "refused"
    """The worker's own checks (job, approval, schema, policy) refused to run it."""
    UNKNOWN = "unknown"
    """A reclaimed call of a tool that is not idempotent: settled as unknown, not run again."""
    EXHAUSTED = "exhausted"
    """A reclaimed idempotent call out of attempts: failed and dead-lettered."""
    SKIPPED = "skipped"
    """The call was settled or no longer runnable when the job came: nothing ran."""


_SETTLED_WITHOUT_RUNNING = {
    "unknown": ExecutionOutcome.UNKNOWN,
    "exhausted": ExecutionOutcome.EXHAUSTED,
    "skip": ExecutionOutcome.SKIPPED,
}
"""`SessionStore.start_call` outcomes other than `run`."""


class WorkerMetrics:
    """The worker's counters and gauges; `render()` is the body of `GET /metrics`."""

    def __init__(self, tools: Iterable[str]) -> None:
        self.registry = CollectorRegistry()
        self.tools = frozenset(tools)
        registry = self.registry
        self.tool_executions = Counter(
            f"{PREFIX}tool_executions",
            "Jobs handled, by tool and outcome.",
            ["tool", "outcome"],
            registry=registry,
        )
        self.tool_duration = Histogram(
            f"{PREFIX}tool_duration_seconds",
            "Time a tool ran (calls that ran: succeeded or failed).",
            ["tool"],
            buckets=DURATION_BUCKETS,
            registry=registry,
        )
        self.jobs_reclaimed = Counter(
            f"{PREFIX}jobs_reclaimed", "Jobs taken over from stopped workers.", registry=registry
        )
        self.redis_errors = Counter(
            f"{PREFIX}redis_errors", "Redis calls that failed or timed out.", registry=registry
        )
        self.jobs_in_flight = Gauge(
            f"{PREFIX}jobs_in_flight", "Jobs this worker is handling now.", registry=registry
        )
        self.up = Gauge(f"{PREFIX}up", "1 while the worker consumes jobs.", registry=registry)
        self.last_loop = Gauge(
            f"{PREFIX}last_loop_timestamp_seconds",
            "Unix time of the consume loop's latest turn.",
            registry=registry,
        )
        for tool in (*self.tools, OTHER_TOOL):  # every series from zero, so rate() sees the first
            self.tool_duration.labels(tool)
            for outcome in ExecutionOutcome:
                self.tool_executions.labels(tool, outcome.value)

    def tool_label(self, name: str) -> str:
        """`name` if it is a configured tool, else `other`."""
        return name if name in self.tools else OTHER_TOOL

    def ran(self, tool: str, status: str, duration_s: float) -> None:
        """A call that ran, with its result's status (`succeeded` or `failed`)."""
        label = self.tool_label(tool)
        self.tool_executions.labels(label, ExecutionOutcome(status).value).inc()
        self.tool_duration.labels(label).observe(duration_s)

    def refused(self, tool: str) -> None:
        self.tool_executions.labels(self.tool_label(tool), ExecutionOutcome.REFUSED.value).inc()

    def settled_without_running(self, tool: str, start_outcome: str) -> None:
        """A job whose call `start_call` settled or skipped (`unknown`, `exhausted`, `skip`)."""
        outcome = _SETTLED_WITHOUT_RUNNING[start_outcome]
        self.tool_executions.labels(self.tool_label(tool), outcome.value).inc()

    def count_in_flight(self, count: Callable[[], int]) -> None:
        """Read `jobs_in_flight` from `count` at each scrape."""
        self.jobs_in_flight.set_function(count)

    def render(self) -> bytes:
        return generate_latest(self.registry)
