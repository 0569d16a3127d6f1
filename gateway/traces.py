"""The replica's spans: requests, upstream turns, approval waits, decisions, resumes.

One approved request's trace, as an OTLP receiver gets it (core.tracing says how the
context travels through Redis):

    POST /v1/chat/completions                 (server; the client's `traceparent` is its parent)
    ├── chat <model>                          (client; gen_ai.* attributes of the turn)
    ├── approval wait                         (from the opening to the decision; the decision
    │                                          request's span links to it)
    ├── execute_tool <tool>                   (in a worker, one per call)
    └── chat <model>                          (the answer)

A re-attach adds `run resume`, a lease takeover `run takeover`, both in the run's trace.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from contextlib import contextmanager

from opentelemetry import propagate, trace
from opentelemetry.semconv._incubating.attributes import gen_ai_attributes as gen_ai
from opentelemetry.trace import Span, SpanKind, Status, StatusCode
from starlette.types import ASGIApp, Receive, Scope, Send

from core import tracing
from core.asgi import response_status
from core.records import SessionRecord
from gateway.request_ids import request_id_of
from gateway.requests import DecisionRequest
from gateway.upstream import TurnEnd

PROVIDER = "openai"
"""`gen_ai.provider.name`: the upstream speaks OpenAI's wire format, whoever serves it."""


UNTRACED = frozenset({"/healthz", "/readyz", "/metrics"})
"""Probes and scrapes: a span every few seconds per replica would bury the requests."""


class TracedRequests:
    """Pure ASGI middleware: a server span per request (installed only with traces on), the
    current span while the request is served, named `<method> <route template>`."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or scope["path"] in UNTRACED:
            await self.app(scope, receive, send)
            return
        headers = {k.decode("latin-1"): v.decode("latin-1") for k, v in scope["headers"]}
        parent = propagate.extract(headers)
        method = scope["method"]
        with tracing.tracer.start_as_current_span(
            method, context=parent, kind=SpanKind.SERVER
        ) as span:
            span.set_attribute("http.request.method", method)
            span.set_attribute("url.path", scope["path"])
            span.set_attribute("gateway.request_id", request_id_of(scope))
            try:
                await self.app(scope, receive, send)
            finally:
                if status := response_status(scope):
                    span.set_attribute("http.response.status_code", status)
                    if status >= 500:
                        span.set_status(Status(StatusCode.ERROR))
                route = getattr(scope.get("route"), "path", None)
                if route is not None:
                    span.set_attribute("http.route", route)
                    span.update_name(f"{method} {route}")


@contextmanager
def upstream_turn(parent: str, model: str) -> Iterator[Span]:
    """The span of one model turn (`chat <model>`, generative-AI conventions); say how it
    ended with `turn_ended`. Not made current: the conversation that holds it is an async
    generator, which may be resumed by another task (a context attached in one task cannot
    be detached in another)."""
    span = tracing.tracer.start_span(
        f"chat {model}", context=tracing.context_of(parent), kind=SpanKind.CLIENT
    )
    span.set_attribute(gen_ai.GEN_AI_OPERATION_NAME, "chat")
    span.set_attribute(gen_ai.GEN_AI_PROVIDER_NAME, PROVIDER)
    span.set_attribute(gen_ai.GEN_AI_REQUEST_MODEL, model)
    try:
        yield span
    except Exception as error:
        span.record_exception(error)
        span.set_status(Status(StatusCode.ERROR, type(error).__name__))
        raise
    finally:
        span.end()


def turn_ended(span: Span, turn: TurnEnd) -> None:
    span.set_attribute(gen_ai.GEN_AI_RESPONSE_FINISH_REASONS, [turn.finish_reason])
    span.set_attribute(gen_ai.GEN_AI_USAGE_INPUT_TOKENS, turn.prompt_tokens)
    span.set_attribute(gen_ai.GEN_AI_USAGE_OUTPUT_TOKENS, turn.completion_tokens)
    if turn.calls:
        span.set_attribute("gateway.tool_calls", len(turn.calls))


def wait_ended(record: SessionRecord) -> None:
    """Record the session's approval wait, from its opening to its last decision (the claim
    that follows a decision calls it, on whichever replica claims)."""
    if not record.wait_span:
        return
    view = record.view
    calls = view.tool_calls
    decisions = [c.decision for c in calls if c.decision is not None]
    decided_at = max((d.decided_at for d in decisions), default=time.time())
    span = tracing.start_span_with_id(
        "approval wait", record.wait_span, record.trace, view.created_at
    )
    span.set_attribute("approval.session_id", view.id)
    span.set_attribute("approval.status", view.status.value)
    span.set_attribute(gen_ai.GEN_AI_TOOL_NAME, [c.name for c in calls])
    span.set_attribute("approval.decisions", [d.decision for d in decisions])
    span.set_attribute("approval.actors", sorted({d.actor for d in decisions}))
    span.set_attribute("approval.wait_s", round(max(decided_at - view.created_at, 0.0), 3))
    span.end(end_time=int(max(decided_at, view.created_at) * 1e9))


def decided(record: SessionRecord, body: DecisionRequest, actor: str) -> None:
    """The decision request being served (the current span): which wait it decided on."""
    span = trace.get_current_span()
    if not span.is_recording():
        return
    kinds = [body.decision] if body.decision else [c.decision for c in body.calls or ()]
    for link in tracing.link_to(record.trace, record.wait_span):
        span.add_link(link.context, {"approval.link": "decided"})
    span.set_attribute("approval.session_id", record.id)
    span.set_attribute("approval.decisions", kinds)
    span.set_attribute("approval.actor", actor)
    span.set_attribute("approval.status", record.status.value)


def run_event(name: str, record: SessionRecord, **attributes: str | int) -> None:
    """A moment of a run, in its trace: `run resume` (a client re-attached), `run takeover`
    (this replica took the run's lease over), linked to the request that caused it."""
    if not record.trace:
        return
    cause = trace.get_current_span().get_span_context()
    links = [trace.Link(cause)] if cause.is_valid else []
    span = tracing.tracer.start_span(name, context=tracing.context_of(record.trace), links=links)
    span.set_attribute("approval.session_id", record.id)
    for key, value in attributes.items():
        span.set_attribute(f"run.{key}", value)
    span.end()
