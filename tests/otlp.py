"""An OTLP/HTTP trace receiver for the tests: what the processes export, decoded.

It accepts `POST /v1/traces` (protobuf, gzip or not) as a collector does, and keeps each
span with its process's resource, so a test can put one trace back together.
"""

from __future__ import annotations

import contextlib
import gzip
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any

from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import (
    ExportTraceServiceRequest,
    ExportTraceServiceResponse,
)
from opentelemetry.proto.common.v1.common_pb2 import AnyValue
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from tests.receivers import serve_in_thread


@dataclass(frozen=True)
class ReceivedSpan:
    """One span as the receiver decoded it (ids in hex, as W3C `traceparent` writes them)."""

    trace_id: str
    span_id: str
    parent_id: str
    name: str
    kind: int
    start_ns: int
    end_ns: int
    attributes: dict[str, Any]
    links: list[tuple[str, str]]
    """(trace id, span id) of each linked span."""
    service: str
    instance: str
    """`service.instance.id`: the replica's runner id or the worker's name."""
    status: int = 0

    @property
    def seconds(self) -> float:
        return (self.end_ns - self.start_ns) / 1e9


@dataclass
class Collector:
    """The spans received so far, thread-safe."""

    spans: list[ReceivedSpan] = field(default_factory=list)
    _lock: threading.Lock = field(default_factory=threading.Lock)

    def add(self, spans: list[ReceivedSpan]) -> None:
        with self._lock:
            self.spans.extend(spans)

    def snapshot(self) -> list[ReceivedSpan]:
        with self._lock:
            return list(self.spans)

    def wait_for(
        self, holds: Callable[[list[ReceivedSpan]], bool], timeout: float = 20
    ) -> list[ReceivedSpan]:
        """The spans once `holds` is true of them (the last ones seen after `timeout`)."""
        deadline = time.monotonic() + timeout
        while True:
            spans = self.snapshot()
            if holds(spans) or time.monotonic() > deadline:
                return spans
            time.sleep(0.1)


def _value(value: AnyValue) -> Any:
    kind = value.WhichOneof("value")
    if kind == "array_value":
        return [_value(v) for v in value.array_value.values]
    return getattr(value, kind) if kind else None


def _attributes(pairs: Any) -> dict[str, Any]:
    return {pair.key: _value(pair.value) for pair in pairs}


def decode(body: bytes) -> list[ReceivedSpan]:
    request = ExportTraceServiceRequest()
    request.ParseFromString(body)
    spans = []
    for resource_spans in request.resource_spans:
        resource = _attributes(resource_spans.resource.attributes)
        for scope_spans in resource_spans.scope_spans:
            for span in scope_spans.spans:
                spans.append(
                    ReceivedSpan(
                        trace_id=span.trace_id.hex(),
                        span_id=span.span_id.hex(),
                        parent_id=span.parent_span_id.hex(),
                        name=span.name,
                        kind=span.kind,
                        start_ns=span.start_time_unix_nano,
                        end_ns=span.end_time_unix_nano,
                        attributes=_attributes(span.attributes),
                        links=[(link.trace_id.hex(), link.span_id.hex()) for link in span.links],
                        service=str(resource.get("service.name", "")),
                        instance=str(resource.get("service.instance.id", "")),
                        status=span.status.code,
                    )
                )
    return spans


@contextlib.contextmanager
def otlp_receiver() -> Iterator[tuple[str, Collector]]:
    """A receiver on a free port: (its base URL for `OTEL_EXPORTER_OTLP_ENDPOINT`, spans)."""
    collector = Collector()

    async def traces(request: Request) -> Response:
        body = await request.body()
        if request.headers.get("content-encoding") == "gzip":
            body = gzip.decompress(body)
        collector.add(decode(body))
        reply = ExportTraceServiceResponse().SerializeToString()
        return Response(reply, media_type="application/x-protobuf")

    app = Starlette(routes=[Route("/v1/traces", traces, methods=["POST"])])
    with serve_in_thread(app) as url:
        yield url, collector


def tree(spans: list[ReceivedSpan], trace_id: str) -> str:
    """One trace as an indented tree (children by start time), for reading in a report."""
    mine = [s for s in spans if s.trace_id == trace_id]
    ids = {s.span_id for s in mine}
    children: dict[str, list[ReceivedSpan]] = {}
    for span in mine:
        parent = span.parent_id if span.parent_id in ids else ""
        children.setdefault(parent, []).append(span)
    lines: list[str] = []

    def walk(parent: str, depth: int) -> None:
        for span in sorted(children.get(parent, []), key=lambda s: s.start_ns):
            where = f"{span.service} {span.instance}"
            lines.append(f"{'  ' * depth}{span.name}  [{where}, {span.seconds:.3f} s]")
            walk(span.span_id, depth + 1)

    walk("", 0)
    return "\n".join(lines)
