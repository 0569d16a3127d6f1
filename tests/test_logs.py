"""Every process's log: one JSON object per line saying who, what and for which request and
session; never an API key, and never a tool call's arguments unless switched on."""

from __future__ import annotations

import io
import itertools
import logging
import re
import socket
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any

import orjson
import pytest
import structlog

from core.logs import EVENT_PROCESSORS, LogFormat, formatter
from gateway.auth import hash_key
from gateway.webhooks import shown
from tests.clients import HeldStream, decide
from tests.conftest import Replica, Stack, StackFactory
from tests.processes import Process, free_port, python_module, wait_http

SECRET_ARGUMENT = "sekrit-arg-7f3a9c"
"""getStringLength's argument in every chat here: recognisable wherever it might leak."""
KEYS = {"alice": ("key-alice-5d1e0b", ["requester"]), "bob": ("key-bob-9b2c4a", ["approver"])}
UPSTREAM_KEY = "sk-upstream-4e8d11"
NEVER_LOGGED = (UPSTREAM_KEY, *(key for key, _ in KEYS.values()))
REQUIRED = ("time", "level", "process", "replica", "logger", "event")
LEVELS = {"debug", "info", "warning", "error", "critical"}
EVENT_NAME = re.compile(r"[a-z][a-z0-9_]*")
Line = dict[str, Any]
_loggers = itertools.count()


def api_keys_setting() -> str:
    keys = [
        {"sha256": hash_key(key), "name": name, "tenant": "acme", "roles": roles}
        for name, (key, roles) in KEYS.items()
    ]
    return orjson.dumps(keys).decode()


@dataclass
class LoggedStack:
    """A gateway and a worker behind an offline model of their own, all logging JSON."""

    stack: Stack
    offline: Process
    offline_port: int

    @property
    def replica(self) -> Replica:
        return self.stack.replicas[0]

    def stop(self) -> None:
        """Stop every process, so that each log is complete (shutdown lines included)."""
        self.stack.stop()
        self.offline.stop()

    def texts(self) -> dict[str, str]:
        worker = self.stack.workers[0]
        return {
            "gateway": self.replica.process.logs(),
            "worker": worker.logs(),
            "offline_model": self.offline.logs(),
        }


LoggedStackFactory = Callable[[bool], LoggedStack]


@pytest.fixture
def logged_stack(make_stack: StackFactory, tmp_path: Path) -> Iterator[LoggedStackFactory]:
    """`logged_stack(log_arguments)`: a `LoggedStack` at debug level, stopped at the end."""
    started: list[LoggedStack] = []

    def build(log_arguments: bool) -> LoggedStack:
        workdir = tmp_path / f"offline-{len(started)}"
        workdir.mkdir()
        port = free_port()
        argv = python_module("offline_model", "--port", str(port))
        offline = Process("offline_model", argv, {"GATEWAY_LOG_FORMAT": "json"}, workdir)
        offline.start()
        wait_http(f"http://127.0.0.1:{port}/health", offline)
        stack = make_stack(
            upstream=f"http://127.0.0.1:{port}/v1",
            api_keys=api_keys_setting(),
            upstream_api_key=UPSTREAM_KEY,
            log_format="json",
            log_level="debug",
            log_arguments=str(log_arguments).lower(),
        )
        started.append(LoggedStack(stack, offline, port))
        return started[-1]

    yield build
    for logged in started:
        logged.offline.stop()


def held_cycle(replica: Replica, decision: str, request_id: str) -> tuple[str, str]:
    """A streamed chat (sent with `request_id`) whose getStringLength call bob decides;
    (the session id, the decision response's own X-Request-Id)."""
    prompt = f"Please use getStringLength on '{SECRET_ARGUMENT}'"
    held = HeldStream(
        replica.url, prompt, api_key=KEYS["alice"][0], headers={"X-Request-Id": request_id}
    )
    session = held.wait_pending()
    response = decide(replica.url, session["id"], decision, "logs test", key=KEYS["bob"][0])
    assert response.status_code == 200
    assert held.wait().finish_reason == "stop"
    return session["id"], response.headers["x-request-id"]


def parsed(text: str) -> list[Line]:
    """Every line of a log, each of which must be one JSON object."""
    lines = [orjson.loads(line) for line in text.splitlines()]
    assert lines and all(isinstance(line, dict) for line in lines)
    return lines


def having(lines: list[Line], **fields: Any) -> list[Line]:
    return [line for line in lines if fields.items() <= line.items()]


def test_every_line_of_every_process_is_json_with_who_what_and_which_request(
    logged_stack: LoggedStackFactory,
) -> None:
    logged = logged_stack(False)
    replica, worker = logged.replica, logged.stack.workers[0]
    approved, decision_request = held_cycle(replica, "approve", "req-logs-approve")
    rejected, _ = held_cycle(replica, "reject", "req-logs-reject")
    logged.stop()
    logs = {process: parsed(text) for process, text in logged.texts().items()}

    host = re.escape(socket.gethostname())
    replicas = {  # the runner id, the worker's consumer name, the model's address
        "gateway": re.compile(rf"{host}:{replica.process.pid}:[0-9a-f]{{8}}"),
        "worker": re.compile(rf"{host}-{worker.pid}"),
        "offline_model": re.compile(re.escape(f"127.0.0.1:{logged.offline_port}")),
    }
    for process, lines in logs.items():
        for line in lines:
            assert all(line.get(field) for field in REQUIRED), line
            assert line["process"] == process and replicas[process].fullmatch(line["replica"])
            assert line["level"] in LEVELS and EVENT_NAME.fullmatch(line["event"]), line
            assert datetime.fromisoformat(line["time"]).utcoffset() is not None
    gateway, tool_runs = logs["gateway"], having(logs["worker"], event="tool_run_finished")

    # The chat's own request id (sent by the client) and the session it opened.
    chat = having(gateway, request_id="req-logs-approve")
    assert having(chat, event="session_opened", session_id=approved, tenant="acme")
    assert having(chat, event="http_request", route="/v1/chat/completions", status=200)
    assert having(gateway, event="session_opened", request_id="req-logs-reject")
    # The decision's request id, as its response said it.
    decision = having(gateway, request_id=decision_request, session_id=approved, tenant="acme")
    assert having(decision, event="session_decided", actor="bob", applied=True)
    route = "/v1/approvals/{session_id}/decision"
    assert having(decision, event="http_request", route=route, method="POST", status=200)
    # The worker ran the approved call only, and its line says for which session.
    assert [(line["session_id"], line["tenant"], line["status"]) for line in tool_runs] == [
        (approved, "acme", "succeeded")
    ]
    assert not having(logs["worker"], session_id=rejected)
    assert having(logs["offline_model"], event="http_request", route="/v1/chat/completions")

    # At debug level the lines that carry arguments are there, redacted.
    for lines in (gateway, logs["worker"]):
        arguments = having(lines, event="tool_call_arguments", session_id=approved)
        assert arguments and all(line["arguments"] == "[redacted]" for line in arguments)
    for process, text in logged.texts().items():
        for secret in (SECRET_ARGUMENT, *NEVER_LOGGED):
            assert secret not in text, (process, secret)


def test_log_arguments_lets_arguments_through_and_never_a_key(
    logged_stack: LoggedStackFactory,
) -> None:
    logged = logged_stack(True)
    approved, _ = held_cycle(logged.replica, "approve", "req-logs-arguments")
    logged.stop()
    texts = logged.texts()

    for process in ("gateway", "worker"):
        lines = having(parsed(texts[process]), event="tool_call_arguments", session_id=approved)
        assert [line["arguments"] for line in lines] == [{"text": SECRET_ARGUMENT}], process
    for process, text in texts.items():
        for secret in NEVER_LOGGED:
            assert secret not in text, (process, secret)


# --- the formatter, without processes ------------------------------------------------------


def capture(
    fmt: LogFormat = "json", *, log_arguments: bool = False
) -> tuple[structlog.stdlib.BoundLogger, logging.Logger, io.StringIO]:
    """A structlog logger and a `logging` one (a library's), both rendered into the buffer
    by the processes' formatter, and touching no global logging state."""
    out = io.StringIO()
    handler = logging.StreamHandler(out)
    handler.setFormatter(formatter("worker", "w-1", fmt, log_arguments, colors=False))
    library = logging.getLogger(f"tests.logs.{next(_loggers)}")
    library.handlers[:] = [handler]
    library.propagate = False
    library.setLevel(logging.DEBUG)
    ours: structlog.stdlib.BoundLogger = structlog.wrap_logger(
        library, processors=EVENT_PROCESSORS, wrapper_class=structlog.stdlib.BoundLogger
    )
    return ours, library, out


def test_secrets_are_redacted_at_any_depth_and_arguments_unless_switched_on() -> None:
    for log_arguments in (False, True):
        ours, _, out = capture(log_arguments=log_arguments)
        ours.info(
            "job_refused",
            api_key="k1",
            headers={"Authorization": "Bearer k2", "accept": "*/*"},
            webhook_secret="k3",
            arguments={"text": "a1"},
            arguments_sha256="0f0f",
        )
        [line] = parsed(out.getvalue())
        assert line["api_key"] == line["webhook_secret"] == "[redacted]"
        assert line["headers"] == {"Authorization": "[redacted]", "accept": "*/*"}
        assert line["arguments"] == ({"text": "a1"} if log_arguments else "[redacted]")
        assert line["arguments_sha256"] == "0f0f"


def test_library_records_and_exceptions_are_one_json_line_with_the_bound_context() -> None:
    ours, library, out = capture()
    with structlog.contextvars.bound_contextvars(request_id="req-1", tenant="acme"):
        library.warning("Exception in %s", "ASGI application")
        try:
            _ = 1 / 0
        except ZeroDivisionError:
            ours.exception("unexpected_error", path="/v1/x")
    foreign, failed = parsed(out.getvalue())
    assert foreign["event"] == "library_log"
    assert foreign["message"] == "Exception in ASGI application"
    assert foreign["logger"] == library.name and foreign["level"] == "warning"
    assert failed["level"] == "error" and "ZeroDivisionError" in failed["exception"]
    for line in (foreign, failed):
        assert (line["request_id"], line["tenant"], line["process"]) == ("req-1", "acme", "worker")


def test_console_format_is_for_people_and_redacts_too() -> None:
    ours, library, out = capture("console")
    ours.info("job_refused", job="1-0", api_key="k-console-1")
    library.info("plain words")
    first, second = out.getvalue().splitlines()
    assert "job_refused" in first and "job=1-0" in first and "api_key=[redacted]" in first
    assert "k-console-1" not in first and "\x1b[" not in first and not first.startswith("{")
    assert "library_log" in second and "plain words" in second


def test_a_webhook_receiver_is_logged_without_its_credentials() -> None:
    url = "https://user:pw@hooks.example.com:8443/services/T0/B0/XXXX?token=t1"
    assert shown(url) == "https://hooks.example.com:8443"
