"""Structured logs: every process writes one JSON object per line (or a console rendering).

`configure()` sets up structlog and the standard library's `logging` once per process, so
that our events (`structlog.stdlib.get_logger(__name__)`, an event name and fields) and the
records of libraries (uvicorn, redis-py, aiohttp) come out the same way. Every line has
`time`, `level`, `process`, `replica`, `logger` and `event`, plus the context bound for the
request or job being served (`request_id`, `session_id`, `tenant`, `tool`). Redaction is
the last step before rendering (`Redactor`). Fields and events: docs/logging.md.
"""

from __future__ import annotations

import logging
import sys
import time
from collections.abc import Mapping
from typing import IO, Any, Literal

import orjson
import structlog
from starlette.types import ASGIApp, Receive, Scope, Send
from structlog.typing import EventDict, Processor, WrappedLogger

from core.asgi import response_status

LogFormat = Literal["json", "console"]
ProcessName = Literal["gateway", "worker", "offline_model"]

REDACTED = "[redacted]"
SECRET_FIELDS = frozenset({"api_key", "authorization", "key", "token", "secret", "password"})
"""Fields whose values never reach a log, at any depth; also as a suffix (`upstream_api_key`)."""
ARGUMENT_FIELDS = frozenset({"arguments"})
"""Tool-call arguments (also `*_arguments`): logged only with `log_arguments` on."""
LEADING_FIELDS = ("time", "level", "process", "replica", "logger", "event")
LIBRARY_EVENT = "library_log"
"""The event of a library's own log record; its text is the `message` field."""
PROBE_PATHS = frozenset({"/health", "/healthz", "/readyz", "/metrics"})
"""Probes and scrapes: their access lines are debug ones."""

log = structlog.stdlib.get_logger(__name__)

_SHARED: list[Processor] = [
    structlog.contextvars.merge_contextvars,
    structlog.processors.add_log_level,
    structlog.stdlib.add_logger_name,
    structlog.processors.TimeStamper(fmt="iso", utc=True, key="time"),
]
"""What every event gets, ours and libraries' alike."""

EVENT_PROCESSORS: list[Processor] = [
    structlog.stdlib.filter_by_level,
    *_SHARED,
    structlog.stdlib.ProcessorFormatter.wrap_for_formatter,
]
"""structlog's chain: our events become `logging` records carrying their fields."""


def configure(
    process: ProcessName,
    *,
    replica: str,
    fmt: LogFormat = "json",
    level: str = "info",
    log_arguments: bool = False,
    stream: IO[str] | None = None,
) -> None:
    """Render every log record of this process to `stream` (stderr) in `fmt`, from `level` up."""
    route_to_logging()
    out = stream or sys.stderr
    handler = logging.StreamHandler(out)
    handler.setFormatter(formatter(process, replica, fmt, log_arguments, colors=out.isatty()))
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level.upper())
    logging.captureWarnings(True)  # a library's warnings.warn is a line like any other


def route_to_logging() -> None:
    """Send structlog's events through `logging`, where `configure`'s handler renders them
    (and where tests' `caplog` sees them, each record's `msg` the event's fields)."""
    structlog.configure(
        processors=EVENT_PROCESSORS,
        logger_factory=structlog.stdlib.LoggerFactory(),
        wrapper_class=structlog.stdlib.BoundLogger,
        cache_logger_on_first_use=True,
    )


def formatter(
    process: ProcessName, replica: str, fmt: LogFormat, log_arguments: bool, *, colors: bool
) -> structlog.stdlib.ProcessorFormatter:
    """The `logging.Formatter` that renders one line for any record, ours or a library's."""
    renderer: Processor = (
        structlog.processors.JSONRenderer(serializer=_json)
        if fmt == "json"
        else structlog.dev.ConsoleRenderer(colors=colors, timestamp_key="time")
    )
    return structlog.stdlib.ProcessorFormatter(
        foreign_pre_chain=[*_SHARED, _library_event],
        processors=[
            structlog.stdlib.ProcessorFormatter.remove_processors_meta,
            structlog.processors.format_exc_info,  # `exception`: the traceback as one string
            Identity(process, replica),
            Redactor(log_arguments),
            renderer,
        ],
    )


class Identity:
    """Adds `process` and `replica`, and puts the fields every line has first."""

    def __init__(self, process: ProcessName, replica: str) -> None:
        self.process = process
        self.replica = replica

    def __call__(self, logger: WrappedLogger, method: str, event: EventDict) -> EventDict:
        event.setdefault("process", self.process)
        event.setdefault("replica", self.replica)
        leading = {name: event.pop(name) for name in LEADING_FIELDS if name in event}
        return {**leading, **event}


class Redactor:
    """The last guard: the values of secret fields become "[redacted]" at any depth, and
    those of tool-call arguments too unless `log_arguments` is on."""

    def __init__(self, log_arguments: bool) -> None:
        self.log_arguments = log_arguments

    def __call__(self, logger: WrappedLogger, method: str, event: EventDict) -> EventDict:
        return self._clean(event)

    def hides(self, name: str) -> bool:
        name = name.lower()
        if _named(name, ARGUMENT_FIELDS):
            return not self.log_arguments
        return _named(name, SECRET_FIELDS)

    def _clean(self, fields: Mapping[Any, Any]) -> dict[Any, Any]:
        return {
            name: REDACTED if self.hides(str(name)) else self._clean_value(value)
            for name, value in fields.items()
        }

    def _clean_value(self, value: Any) -> Any:
        if isinstance(value, Mapping):
            return self._clean(value)
        if isinstance(value, list | tuple):
            return [self._clean_value(item) for item in value]
        return value


def _named(name: str, names: frozenset[str]) -> bool:
    """`name` is one of `names`, or ends with `_` and one of them (`upstream_api_key`)."""
    return name in names or any(name.endswith(f"_{known}") for known in names)


def _library_event(logger: WrappedLogger, method: str, event: EventDict) -> EventDict:
    event["message"] = event["event"]
    event["event"] = LIBRARY_EVENT
    return event


def _json(event: EventDict, **_: Any) -> str:
    return orjson.dumps(event, default=repr, option=orjson.OPT_NON_STR_KEYS).decode()


class AccessLog:
    """Pure ASGI middleware (inside `core.asgi.ResponseStart`): one `http_request` line per
    request, when its response ends (a stream when it closes); probes and scrapes
    (`PROBE_PATHS`) at debug level."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        started = time.perf_counter()
        try:
            await self.app(scope, receive, send)
        finally:
            path = scope["path"]
            log.log(
                logging.DEBUG if path in PROBE_PATHS else logging.INFO,
                "http_request",
                method=scope["method"],
                route=getattr(scope.get("route"), "path", "unmatched"),
                path=path,
                # None started: the exception goes on to the server.
                status=response_status(scope) or 500,
                duration_ms=round((time.perf_counter() - started) * 1000, 3),
            )
