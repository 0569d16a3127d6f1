"""Prometheus metrics: one `Metrics` per app, in a registry of its own, served at `/metrics`.

Every label value comes from a bounded set (route templates, status codes, configured
tenants and server-side tools, decision kinds, outcome enums): never a session id or
free text. What each metric means: docs/metrics.md.
"""

from __future__ import annotations

import time
from collections import Counter as Tally
from collections.abc import Callable, Iterable, Iterator
from types import TracebackType

import openai
from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram
from prometheus_client.core import CounterMetricFamily, Metric
from prometheus_client.exposition import generate_latest
from prometheus_client.registry import Collector
from starlette.types import Scope

from core.connect import REDIS_ERRORS
from core.errors import UpstreamError
from core.records import ApprovalSession, CallStatus, Decision
from core.store import SessionStore

PREFIX = "approval_gateway"
METHODS = frozenset({"GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS"})
NOT_A_PERSON = frozenset({"policy", "grant", "deadline"})
"""Decision actors that are not a person (any other actor is an approver's name)."""
TIMEOUTS = (TimeoutError, openai.APITimeoutError)
"""What an `UpstreamError` caused by a timeout was caused by (either adapter)."""
WAIT_BUCKETS = (0.5, 1, 2.5, 5, 10, 30, 60, 120, 300, 600, 1800, 3600)
RESUME_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5)
UPSTREAM_BUCKETS = (0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120)


class Metrics:
    """This replica's metrics. `tenants` and `tools` (the configured tenants and
    server-side tools) bound the labels of `pending_approvals`."""

    def __init__(self, tenants: Iterable[str] = ("default",), tools: Iterable[str] = ()) -> None:
        self.registry = registry = CollectorRegistry()
        self.tenants = frozenset(tenants)
        self.tools = frozenset(tools)
        self._pending_labels: set[tuple[str, str]] = set()
        self._deliveries = _DeliveryCounts()
        registry.register(self._deliveries)
        self.http_requests = Counter(
            f"{PREFIX}_http_requests",
            "HTTP responses started, by route template, method and status",
            ["route", "method", "status"],
            registry=registry,
        )
        self.held_streams = Gauge(
            f"{PREFIX}_held_streams", "SSE streams this replica holds now", registry=registry
        )
        self.pending_approvals = Gauge(
            f"{PREFIX}_pending_approvals",
            "Tool calls awaiting a decision (deployment-wide, read from Redis at scrape time)",
            ["tenant", "tool"],
            registry=registry,
        )
        self.approval_wait = Histogram(
            f"{PREFIX}_approval_wait_seconds",
            "From a session's creation to an approver's decision of one of its calls",
            ["decision"],
            buckets=WAIT_BUCKETS,
            registry=registry,
        )
        self.resume = Histogram(
            f"{PREFIX}_resume_seconds",
            "From the decision to the held stream's continuation on the replica holding it",
            buckets=RESUME_BUCKETS,
            registry=registry,
        )
        self.decisions = Counter(
            f"{PREFIX}_decisions",
            "Tool-call decisions applied by this replica, by kind and actor type",
            ["decision", "actor_type"],
            registry=registry,
        )
        self.upstream_first_token = Histogram(
            f"{PREFIX}_upstream_time_to_first_token_seconds",
            "From a model turn's request to its first output",
            buckets=UPSTREAM_BUCKETS,
            registry=registry,
        )
        self.upstream_duration = Histogram(
            f"{PREFIX}_upstream_duration_seconds",
            "From a model turn's request to its end (turns that completed)",
            buckets=UPSTREAM_BUCKETS,
            registry=registry,
        )
        self.upstream_errors = Counter(
            f"{PREFIX}_upstream_errors",
            "Model turns that failed, by error kind",
            ["kind"],
            registry=registry,
        )
        self.redis_errors = Counter(
            f"{PREFIX}_redis_errors",
            "Redis calls that failed, as reported to a client or tolerated and retried",
            registry=registry,
        )
        self.lease_takeovers = Counter(
            f"{PREFIX}_lease_takeovers",
            "Runs this replica took over from a replica that stopped",
            registry=registry,
        )
        self.run_log_writes = Counter(
            f"{PREFIX}_run_log_writes",
            "Batches of stream events appended to run logs",
            registry=registry,
        )

    def follow_held_streams(self, held: Callable[[], float]) -> None:
        """Read the held streams at scrape time (`StreamSlots.held`)."""
        self.held_streams.set_function(held)

    def follow_webhooks(self, outcomes: Callable[[], dict[str, int]]) -> None:
        """Read the webhook deliveries' outcome counts at scrape time."""
        self._deliveries.outcomes = outcomes

    def responded(self, scope: Scope, status: int) -> None:
        route = getattr(scope.get("route"), "path", "unmatched")
        method = scope["method"] if scope["method"] in METHODS else "other"
        self.http_requests.labels(route, method, str(status)).inc()

    def decided(self, decisions: Iterable[Decision], created_at: float | None = None) -> None:
        """Count decisions; with `created_at` (their session's), observe each one's wait."""
        for decision in decisions:
            self.decisions.labels(decision.decision, _actor_type(decision.actor)).inc()
            if created_at is not None:
                wait = max(decision.decided_at - created_at, 0.0)
                self.approval_wait.labels(decision.decision).observe(wait)

    def expired(self, session: ApprovalSession) -> None:
        """A session expired here: its undecided calls were rejected by the deadline."""
        expired = [c.decision for c in session.tool_calls if c.status is CallStatus.EXPIRED]
        self.decided(d for d in expired if d is not None)

    def resumed(self, session: ApprovalSession) -> None:
        """A held stream continues after the decision that ended its session's wait."""
        times = [c.decision.decided_at for c in session.tool_calls if c.decision is not None]
        if times:
            self.resume.observe(max(time.time() - max(times), 0.0))

    def upstream_turn(self) -> UpstreamTurn:
        return UpstreamTurn(self)

    def redis_failed(self) -> None:
        self.redis_errors.inc()

    async def refresh_pending(self, store: SessionStore) -> None:
        """Set `pending_approvals` from Redis; on a Redis error keep the last values."""
        try:
            calls = await store.pending_calls()
        except REDIS_ERRORS:
            self.redis_failed()
            return
        counts = Tally((self._tenant(t), self._tool(name, side)) for t, name, side in calls)
        self._pending_labels |= counts.keys()
        for labels in self._pending_labels:  # a series once seen stays, at 0 when none wait
            self.pending_approvals.labels(*labels).set(counts.get(labels, 0))

    def _tenant(self, tenant: str) -> str:
        return tenant if tenant in self.tenants else "other"

    def _tool(self, name: str, side: str) -> str:
        if side == "server" and name in self.tools:
            return name
        return "client_tool" if side == "client" else "other"

    def exposition(self) -> bytes:
        return generate_latest(self.registry)


def _actor_type(actor: str) -> str:
    return actor if actor in NOT_A_PERSON else "person"


class UpstreamTurn:
    """Times one model turn: `with metrics.upstream_turn() as turn:` around the stream, and
    `turn.first_output()` at its first text. A turn cut short (cancelled, or its client's
    generator closed) is not observed."""

    __slots__ = ("_first_seen", "_metrics", "_started")

    def __init__(self, metrics: Metrics) -> None:
        self._metrics = metrics
        self._started = time.monotonic()
        self._first_seen = False

    def __enter__(self) -> UpstreamTurn:
        return self

    def first_output(self) -> None:
        if not self._first_seen:
            self._first_seen = True
            self._metrics.upstream_first_token.observe(time.monotonic() - self._started)

    def __exit__(
        self,
        kind: type[BaseException] | None,
        error: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        if error is None:
            self.first_output()  # a turn of tool calls only: its output came at its end
            self._metrics.upstream_duration.observe(time.monotonic() - self._started)
        elif isinstance(error, UpstreamError):
            kind_label = "timeout" if isinstance(error.__cause__, TIMEOUTS) else error.code
            self._metrics.upstream_errors.labels(kind_label).inc()


class _DeliveryCounts(Collector):
    """`webhook_deliveries_total{outcome}`, from the sender's own counts."""

    def __init__(self) -> None:
        self.outcomes: Callable[[], dict[str, int]] = dict

    def collect(self) -> Iterator[Metric]:
        family = CounterMetricFamily(
            f"{PREFIX}_webhook_deliveries",
            "Webhook delivery attempts' outcomes: delivered, retried, or failed",
            labels=["outcome"],
        )
        for outcome, count in self.outcomes().items():
            family.add_metric([outcome], count)
        yield family
