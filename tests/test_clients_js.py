"""The approval flow through the JS clients people use, each held past two heartbeats.

Each client is a Node script in tests/js that prints one JSON line per thing it observes and
a summary line last. Every scenario runs at once against one stack with the default
heartbeat: all scripts start together, the test finds each one's approval by the
`X-Conversation-Id` label it sent, decides each after its hold, then reads what each saw.

What a JS client sees of a held request:
- `openai`: keeps a chunk's extra fields, so the approval notice arrives as it is sent;
- the Vercel AI SDK with `@ai-sdk/openai-compatible`: streams at once, the notice only in
  raw chunks (`includeRawChunks`);
- the Vercel AI SDK with `@ai-sdk/openai` `.chat()`: reads ahead to the first content before
  handing over the stream, so nothing of a held stream reaches the caller until the decision
  (an approve button driven by the approval chunk would never show); with
  `X-Approval-Notice: content` the notice arrives first, as text.
"""

from __future__ import annotations

import json
import secrets
import shutil
import subprocess
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import pytest

from core.settings import Settings
from tests.clients import decide
from tests.conftest import Stack

JS_DIR = Path(__file__).resolve().parent / "js"
NODE = shutil.which("node")
HEARTBEAT_S = float(Settings.model_fields["heartbeat_interval_s"].default)
HOLD_S = 41.0
"""How long each client scenario is held before its decision: past two default heartbeats."""
HELLO = "use getStringLength on 'hello'"
ANSWER = "getStringLength returned 5."
NOTICE = "[Waiting for approval of getStringLength: approval session "
RETRYING = ("--timeout", "3000", "--max-retries", "5")
"""Options that make the openai SDK give up on a held attempt after 3 s and retry it."""
NOTICED = ("--header", "X-Approval-Notice: content")
"""Asks the gateway to say the approval notice as content too."""

pytestmark = pytest.mark.skipif(
    NODE is None, reason="node is not installed (`make js-deps`, run by `make test`, installs it)"
)


@dataclass(frozen=True)
class Scenario:
    """One client run: its script and options, its hold, and the decision that ends it."""

    name: str
    script: str
    stream: bool
    decision: str
    hold_s: float = HOLD_S
    prompt: str = HELLO
    options: tuple[str, ...] = ()


CLIENTS = {
    "openai": "openai_sdk",
    "compatible": "ai_sdk_openai_compatible",
    "chat": "ai_sdk_openai_chat",
}
HELD = [
    Scenario(f"{client}-{'stream' if stream else 'whole'}-{decision}", script, stream, decision)
    for client, script in CLIENTS.items()
    for stream in (True, False)
    for decision in ("approve", "reject")
] + [
    Scenario(f"chat-notice-stream-{decision}", CLIENTS["chat"], True, decision, options=NOTICED)
    for decision in ("approve", "reject")
]
# The retry scenarios ask about words of their own, so the audit tells their calls apart.
RETRIED = Scenario(
    "openai-retried", CLIENTS["openai"], stream=False, decision="approve", hold_s=12.0,
    prompt="use getStringLength on 'retry'", options=RETRYING,
)  # fmt: skip
TWINS = "use getStringLength on 'twins'"
TWIN_ANSWERED_FIRST = Scenario(
    "openai-twin-first", CLIENTS["openai"], stream=False, decision="approve", hold_s=5.0,
    prompt=TWINS,
)  # fmt: skip
TWIN_RETRIED = Scenario(
    "openai-twin-retried", CLIENTS["openai"], stream=False, decision="approve", hold_s=12.0,
    prompt=TWINS, options=RETRYING,
)  # fmt: skip


@dataclass(frozen=True)
class Line:
    """One JSON line a client printed, stamped with when the test read it (unix seconds)."""

    at: float
    event: dict[str, Any]


@dataclass
class ClientRun:
    """One client script running, its output read live in a background thread."""

    scenario: Scenario
    label: str
    popen: subprocess.Popen[str]
    stderr_path: Path
    lines: list[Line] = field(default_factory=list)
    session: dict[str, Any] = field(default_factory=dict)
    """The approval session as it was found pending."""
    decided_at: float = 0.0
    """When the test began to post the decision (unix seconds, as the session's times)."""
    problem: str = ""
    """What went wrong on the test's side (no session found, a refused decision)."""
    reader: threading.Thread | None = None

    @classmethod
    def start(cls, scenario: Scenario, base_url: str, log_dir: Path) -> ClientRun:
        assert NODE is not None
        label = f"js-{scenario.name}-{secrets.token_hex(4)}"
        argv = [
            NODE, str(JS_DIR / f"{scenario.script}.mjs"), base_url, scenario.prompt,
            "--header", f"X-Conversation-Id: {label}",
            *(["--stream"] if scenario.stream else []), *scenario.options,
        ]  # fmt: skip
        stderr_path = log_dir / f"{scenario.name}.stderr"
        with stderr_path.open("w") as stderr:
            popen = subprocess.Popen(
                argv, cwd=JS_DIR, stdout=subprocess.PIPE, stderr=stderr, text=True
            )
        run = cls(scenario, label, popen, stderr_path)
        run.reader = threading.Thread(target=run._read, daemon=True)
        run.reader.start()
        return run

    def _read(self) -> None:
        assert self.popen.stdout is not None
        for raw in self.popen.stdout:
            try:
                event = json.loads(raw)
            except ValueError:
                event = {"event": "unparsed", "line": raw.rstrip("\n")}
            self.lines.append(Line(time.time(), event))

    def find_session(self, base_url: str, timeout: float = 30.0) -> None:
        """Find this run's pending approval by its conversation label."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline and self.popen.poll() is None:
            listed = httpx.get(
                f"{base_url}/v1/approvals", params={"conversation": self.label}, timeout=10
            ).json()["data"]
            if listed:
                self.session = listed[0]
                return
            time.sleep(0.2)
        self.problem = f"no pending approval with conversation {self.label!r}"

    def decide(self, base_url: str) -> None:
        self.decided_at = time.time()
        if not self.session:
            return
        response = decide(base_url, self.session["id"], self.scenario.decision, self.reason)
        if response.status_code != 200:
            self.problem = f"decision refused: {response.status_code} {response.text}"

    def decision_due(self) -> float:
        """When to decide: the hold after the approval opened (unix seconds)."""
        return float(self.session.get("created_at", 0.0)) + self.scenario.hold_s

    @property
    def reason(self) -> str:
        return f"no, says {self.label}"

    def stop(self, timeout: float) -> None:
        """Wait for the script to end (killing it after `timeout`) and for its last lines."""
        try:
            self.popen.wait(timeout)
        except subprocess.TimeoutExpired:
            self.popen.kill()
            self.popen.wait(10)
        if self.reader is not None:
            self.reader.join(10)
        self.stderr_path.with_suffix(".out").write_text(self.output())

    def events(self, kind: str) -> list[Line]:
        return [line for line in self.lines if line.event["event"] == kind]

    def heartbeats_before_decision(self) -> list[Line]:
        """The heartbeat lines that came over the wire to the client while it was held."""
        comments = self.events("comment")
        return [c for c in comments if c.event["line"] == ": heartbeat" and c.at < self.decided_at]

    def finished(self) -> dict[str, Any]:
        """The summary of a run that succeeded (failing with everything it printed if not)."""
        assert not self.problem, f"{self.problem}\n{self.output()}"
        summaries = self.events("summary")
        assert self.popen.returncode == 0 and summaries, self.output()
        summary: dict[str, Any] = summaries[-1].event
        assert summary["ok"], self.output()
        return summary

    def output(self) -> str:
        printed = "\n".join(json.dumps(line.event) for line in self.lines)
        return (
            f"{self.scenario.name} ({self.label}) exit {self.popen.returncode}\n"
            f"{printed}\nstderr: {self.stderr_path.read_text()[-3000:]}"
        )


def run_all(base_url: str, scenarios: list[Scenario], log_dir: Path) -> dict[str, ClientRun]:
    """Start every scenario at once, decide each after its hold, wait for all to end."""
    runs = [ClientRun.start(scenario, base_url, log_dir) for scenario in scenarios]
    try:
        for run in runs:
            run.find_session(base_url)
        for run in sorted(runs, key=ClientRun.decision_due):
            time.sleep(max(0.0, run.decision_due() - time.time()))
            run.decide(base_url)
    finally:
        for run in runs:
            run.stop(timeout=60)
    return {run.scenario.name: run for run in runs}


@pytest.fixture(scope="module")
def runs(shared_stack: Stack, tmp_path_factory: pytest.TempPathFactory) -> dict[str, ClientRun]:
    """Every scenario of this module, run at once against a stack with default heartbeats."""
    assert "GATEWAY_HEARTBEAT_INTERVAL_S" not in shared_stack.env()
    assert HOLD_S > 2 * HEARTBEAT_S
    if not (JS_DIR / "node_modules").is_dir():
        pytest.fail("tests/js/node_modules is missing: run `make js-deps`")
    scenarios = [*HELD, RETRIED, TWIN_ANSWERED_FIRST, TWIN_RETRIED]
    return run_all(shared_stack.replicas[0].url, scenarios, tmp_path_factory.mktemp("js"))


def stored(base_url: str, session_id: str) -> dict[str, Any]:
    session: dict[str, Any] = httpx.get(f"{base_url}/v1/approvals/{session_id}").json()
    return session


def audited(base_url: str, event: str, arguments_sha256: str) -> list[dict[str, Any]]:
    """Audit entries of one kind for calls with these arguments."""
    entries: list[dict[str, Any]] = httpx.get(
        f"{base_url}/v1/audit", params={"event": event, "limit": 1000}
    ).json()["data"]
    return [e for e in entries if e["detail"].get("arguments_sha256") == arguments_sha256]


@pytest.mark.parametrize("name", [scenario.name for scenario in HELD])
def test_a_client_held_past_two_heartbeats_gets_the_answer_to_its_decision(
    name: str, runs: dict[str, ClientRun], shared_stack: Stack
) -> None:
    run = runs[name]
    summary = run.finished()
    url = shared_stack.replicas[0].url
    assert run.decided_at - run.session["created_at"] >= HOLD_S
    assert summary["elapsed_ms"] >= HOLD_S * 1000
    assert summary["approval_ids"] == [run.session["id"]], "it saw another session, or none"
    if run.scenario.stream:
        assert len(run.heartbeats_before_decision()) >= 2, run.output()
    [call] = stored(url, run.session["id"])["tool_calls"]
    if run.scenario.decision == "approve":
        assert summary["text"].endswith(ANSWER), run.output()
        assert call["status"] == "succeeded"
    else:
        assert "rejected" in summary["text"] and run.reason in summary["text"], run.output()
        assert call["status"] == "rejected" and call["result"] is None


@pytest.mark.parametrize(
    "name", ["openai-stream-approve", "openai-stream-reject", "compatible-stream-approve",
             "compatible-stream-reject"]
)  # fmt: skip
def test_a_streaming_client_sees_its_approval_while_held(
    name: str, runs: dict[str, ClientRun]
) -> None:
    run = runs[name]
    [seen] = run.events("approval")
    assert seen.event["id"] == run.session["id"] and seen.event["status"] == "pending"
    assert seen.at < run.decided_at


@pytest.mark.parametrize("name", ["chat-stream-approve", "chat-stream-reject"])
def test_openai_chat_reads_ahead_so_a_held_stream_shows_nothing_until_the_decision(
    name: str, runs: dict[str, ClientRun]
) -> None:
    """Without `X-Approval-Notice`, `.chat()` holds back the approval chunk (and everything)
    until the first content, which comes only after the decision: a UI that waits for the
    approval chunk to show an approve button deadlocks; a decision made elsewhere (here,
    through the approvals API) still completes the stream."""
    run = runs[name]
    run.finished()
    shown = run.events("approval") + run.events("text") + run.events("tool_event")
    assert shown and all(line.at > run.decided_at for line in shown), run.output()


@pytest.mark.parametrize("name", ["chat-notice-stream-approve", "chat-notice-stream-reject"])
def test_openai_chat_with_the_notice_as_content_shows_it_before_the_decision(
    name: str, runs: dict[str, ClientRun]
) -> None:
    run = runs[name]
    run.finished()
    first = run.events("text")[0]
    assert first.event["delta"].startswith(NOTICE + run.session["id"]), run.output()
    assert first.at < run.decided_at


def test_openai_js_retries_of_a_held_request_attach_to_it(
    runs: dict[str, ClientRun], shared_stack: Stack
) -> None:
    """Each attempt gives up after 3 s; the approval comes at 12 s: one session, one run."""
    run = runs[RETRIED.name]
    summary = run.finished()
    url = shared_stack.replicas[0].url
    attempts = [line.event["retry_count"] for line in run.events("attempt")]
    assert attempts[:3] == ["0", "1", "2"], "the SDK did not retry the held request"
    assert summary["text"] == ANSWER
    assert summary["approval_ids"] == [run.session["id"]]
    arguments_sha256 = run.session["tool_calls"][0]["arguments_sha256"]
    assert len(audited(url, "requested", arguments_sha256)) == 1
    assert len(audited(url, "executed", arguments_sha256)) == 1


def test_a_retry_gets_its_own_answer_when_a_twin_request_is_answered_first(
    runs: dict[str, ClientRun], shared_stack: Stack
) -> None:
    """The same body from the same key in two conversations: two requests, two approvals.
    The one whose SDK retries must get its own answer, not the twin's decided before it."""
    retried, twin = runs[TWIN_RETRIED.name], runs[TWIN_ANSWERED_FIRST.name]
    assert twin.finished()["approval_ids"] == [twin.session["id"]]
    summary = retried.finished()
    assert stored(shared_stack.replicas[0].url, retried.session["id"])["status"] == "completed"
    assert summary["approval_ids"] == [retried.session["id"]], (
        f"the retried request ({retried.label}) was answered with its twin's session "
        f"({twin.label}); its own approved call ran for nobody:\n{retried.output()}"
    )
