"""Traces (OpenTelemetry): off unless the standard `OTEL_*` variables turn them on.

A chat request is one trace, whichever processes serve it. Its context travels through
Redis, never through a process's memory alone:

- an approval session's hash holds `trace` (the W3C `traceparent` of the chat request's
  span, the parent of everything the conversation does later) and `wait_span` (the span
  id of its approval wait, chosen when it opens, so the decision requests can link to the
  wait before it has ended);
- each tool job carries `trace`, so the worker's span joins the same trace.

The wait itself is recorded by whoever ends it (the replica that claims the decided
session, whichever it is), with the id chosen at the opening and the opening's time as its
start: a wait outlives the replica that opened it.

With no `OTEL_EXPORTER_OTLP_ENDPOINT` (or `..._TRACES_ENDPOINT`) set, or with
`OTEL_SDK_DISABLED=true` or `OTEL_TRACES_EXPORTER=none`, nothing is set up: the API's
no-op tracer records nothing, and no id is written to Redis.
"""

from __future__ import annotations

import contextvars
import os
import secrets
from collections.abc import Mapping

from opentelemetry import propagate, trace
from opentelemetry.context import Context
from opentelemetry.trace import Link, Span, SpanContext, SpanKind, TraceFlags

TRACER_NAME = "approval_gateway"
tracer = trace.get_tracer(TRACER_NAME)
"""The processes' one tracer (a proxy: it records once `configure` has run)."""

_enabled = False
_preset_span_id: contextvars.ContextVar[int] = contextvars.ContextVar("preset_span_id", default=0)


def wanted(env: Mapping[str, str] = os.environ) -> bool:
    """Whether the standard variables ask for traces to be exported."""
    if env.get("OTEL_SDK_DISABLED", "").strip().lower() == "true":
        return False
    if env.get("OTEL_TRACES_EXPORTER", "otlp").strip().lower() == "none":
        return False
    return bool(
        env.get("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT") or env.get("OTEL_EXPORTER_OTLP_ENDPOINT")
    )


def configure(service: str, instance: str) -> bool:
    """Export this process's spans over OTLP/HTTP if the environment asks for it; whether
    it does. `service` is the default `service.name` (`OTEL_SERVICE_NAME` wins), `instance`
    the process's `service.instance.id` (a replica's runner id, a worker's name)."""
    global _enabled
    if not wanted():
        return False
    # Imported here: a process without traces never loads the SDK.
    from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter
    from opentelemetry.sdk.resources import Resource
    from opentelemetry.sdk.trace import TracerProvider
    from opentelemetry.sdk.trace.export import BatchSpanProcessor
    from opentelemetry.sdk.trace.id_generator import RandomIdGenerator

    class PresetIds(RandomIdGenerator):
        """Random ids, except the one span id `with_span_id` asks for."""

        def generate_span_id(self) -> int:
            return _preset_span_id.get() or super().generate_span_id()

    attributes = {"service.instance.id": instance}
    if not os.environ.get("OTEL_SERVICE_NAME"):
        attributes["service.name"] = service
    provider = TracerProvider(resource=Resource.create(attributes), id_generator=PresetIds())
    provider.add_span_processor(BatchSpanProcessor(OTLPSpanExporter()))
    trace.set_tracer_provider(provider)
    _enabled = True
    return True


def enabled() -> bool:
    return _enabled


def shutdown() -> None:
    """Export what is buffered (a process calls it on its way out)."""
    provider = trace.get_tracer_provider()
    flush = getattr(provider, "shutdown", None)
    if _enabled and flush is not None:
        flush()


def traceparent(context: Context | None = None) -> str:
    """The W3C `traceparent` of the span current in `context` ("" when there is none)."""
    carrier: dict[str, str] = {}
    propagate.inject(carrier, context=context)
    return carrier.get("traceparent", "")


def context_of(parent: str) -> Context | None:
    """The context a `traceparent` names, to start child spans in (None: start a trace)."""
    if not parent:
        return None
    return propagate.extract({"traceparent": parent})


def new_span_id() -> str:
    """A span id chosen ahead of its span (16 hex digits; "" while traces are off)."""
    if not _enabled:
        return ""
    return format(secrets.randbits(64) or 1, "016x")


def link_to(parent: str, span_id: str) -> list[Link]:
    """A link to the span `span_id` of `parent`'s trace (none if either is missing)."""
    context = trace.get_current_span(context_of(parent)).get_span_context()
    if not context.is_valid or not span_id:
        return []
    linked = SpanContext(
        context.trace_id, int(span_id, 16), is_remote=True, trace_flags=TraceFlags(1)
    )
    return [Link(linked)]


def start_span_with_id(
    name: str,
    span_id: str,
    parent: str,
    start_time_s: float,
    kind: SpanKind = SpanKind.INTERNAL,
) -> Span:
    """Start the span whose id was chosen earlier (`new_span_id`), as of `start_time_s`."""
    token = _preset_span_id.set(int(span_id, 16) if span_id else 0)
    try:
        return tracer.start_span(
            name, context=context_of(parent), kind=kind, start_time=int(start_time_s * 1e9)
        )
    finally:
        _preset_span_id.reset(token)
