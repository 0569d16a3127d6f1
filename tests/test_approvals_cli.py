"""`gateway-approvals`, the terminal client, run as a real process against two replicas.

Its one-shot commands change sessions as the API then shows them, its refusals are one
line with exit status 1, and `watch`, driven through a pipe, decides calls requested on
either replica while their clients' streams are held, re-attaches after losing its replica
and skips what someone else decided.
"""

from __future__ import annotations

import codecs
import os
import re
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from typing import IO, Any

import httpx
import orjson
import pytest

from gateway.approvals_cli import QUESTION
from gateway.auth import hash_key
from tests.clients import HeldStream, bearer, decide, decide_calls, open_pending
from tests.conftest import Replica, Stack, StackFactory
from tests.processes import ROOT, RedisServer, free_port

# name: (tenant, roles); the key is "key-<name>". Each watch test has a tenant of its own,
# so that sessions other tests leave pending are not offered to it.
KEYS = {
    "requester": ("acme", ["requester"]),
    "approver": ("acme", ["approver"]),
    "dual": ("acme", ["requester", "approver"]),
    **{f"{t}-requester": (t, ["requester"]) for t in ("w1", "w2", "w3")},
    **{f"{t}-approver": (t, ["approver"]) for t in ("w1", "w2", "w3")},
    "w2-colleague": ("w2", ["approver"]),
}
TIMEOUT_S = 20.0


def api_keys() -> str:
    return orjson.dumps(
        [
            {"sha256": hash_key(f"key-{name}"), "name": name, "tenant": tenant, "roles": roles}
            for name, (tenant, roles) in KEYS.items()
        ]
    ).decode()


@pytest.fixture(scope="module")
def stack(
    redis_server: RedisServer, offline_model: str, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Stack]:
    """Two replicas and a worker with keys, heartbeats every second."""
    settings = {"GATEWAY_API_KEYS": api_keys(), "GATEWAY_HEARTBEAT_INTERVAL_S": "1"}
    workdir = tmp_path_factory.mktemp("approvals-cli")
    stack = Stack(redis_server, offline_model, workdir, "cli", settings)
    stack.add_worker()
    stack.add_replica()
    stack.add_replica()
    yield stack
    stack.stop()


@pytest.fixture
def replica(stack: Stack) -> Replica:
    return stack.replicas[0]


def cli_env(url: str, key: str | None) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k not in ("GATEWAY_URL", "GATEWAY_API_KEY")}
    env |= {"PYTHONPATH": str(ROOT), "GATEWAY_URL": url}
    if key is not None:
        env["GATEWAY_API_KEY"] = f"key-{key}"
    return env


def cli(url: str, *args: str, key: str | None = "approver") -> subprocess.CompletedProcess[str]:
    """Run `gateway-approvals ARGS` to its end, as the key named `key`."""
    return subprocess.run(
        [sys.executable, "-m", "gateway.approvals_cli", *args],
        env=cli_env(url, key),
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=TIMEOUT_S,
        check=False,
    )


def hold(replica: Replica, prompt: str, requester: str = "requester") -> HeldStream:
    """A streamed chat held at its approval: the client waits on its open stream."""
    held = HeldStream(replica.url, prompt, api_key=f"key-{requester}")
    held.wait_pending()
    return held


def session_of(replica: Replica, session_id: str, key: str = "approver") -> dict[str, Any]:
    response = httpx.get(
        f"{replica.url}/v1/approvals/{session_id}", headers=bearer(f"key-{key}"), timeout=10
    )
    assert response.status_code == 200, response.text
    session: dict[str, Any] = response.json()
    return session


def test_list_and_show_describe_pending_sessions(replica: Replica) -> None:
    held = hold(replica, "use getStringLength on 'abc'")
    session_id = held.approval["id"]
    [call] = session_of(replica, session_id)["tool_calls"]

    listed = cli(replica.url, "list")
    assert listed.returncode == 0, listed.stderr
    [line] = [row for row in listed.stdout.splitlines() if session_id in row]
    assert "requester" in line and "getStringLength" in line
    assert re.search(r"\b\d+s old +9m\d\ds left +getStringLength$", line), line
    as_json = orjson.loads(cli(replica.url, "list", "--json").stdout)
    assert session_id in {s["id"] for s in as_json["data"]}

    shown = cli(replica.url, "show", session_id)
    assert shown.returncode == 0, shown.stderr
    assert f"approval session {session_id}: pending" in shown.stdout
    assert "requested by requester (tenant acme)" in shown.stdout
    assert "user: use getStringLength on 'abc'" in shown.stdout
    assert f"call {call['id']}: getStringLength (pending)" in shown.stdout
    assert f"why: {call['policy_reason']}" in shown.stdout
    assert '"text": "abc"' in shown.stdout
    assert orjson.loads(cli(replica.url, "show", session_id, "--json").stdout)["id"] == session_id

    rejected = cli(replica.url, "reject", session_id, "--reason", "not now")
    assert rejected.returncode == 0, rejected.stderr
    assert f"approval session {session_id}: rejected" in rejected.stdout
    [call] = session_of(replica, session_id)["tool_calls"]
    assert call["status"] == "rejected"
    assert call["decision"]["reason"] == "not now" and call["decision"]["actor"] == "approver"
    assert "not now" in held.wait().text
    after = cli(replica.url, "list")
    assert session_id not in after.stdout


def test_show_passes_no_terminal_control_characters_through(replica: Replica) -> None:
    # An escape sequence or a bidi override in a call could hide or reorder what the
    # approver reads; they are shown escaped.
    held = hold(replica, "use getStringLength on 'a\x1b[8mhidden\u202eevil'")
    shown = cli(replica.url, "show", held.approval["id"]).stdout
    assert "\x1b" not in shown and "\u202e" not in shown
    assert shown.count("a\\u001b[8mhidden\\u202eevil") == 2  # the context and the arguments
    assert cli(replica.url, "reject", held.approval["id"], "--reason", "odd").returncode == 0
    held.wait()


def test_approve_binds_the_shown_hash_call_by_call_and_can_grant(replica: Replica) -> None:
    held = hold(replica, "use getStringLength on 'abc' and getStringLength on 'hello'")
    session_id = held.approval["id"]
    first, second = session_of(replica, session_id)["tool_calls"]

    one = cli(replica.url, "approve", session_id, "--call", first["id"], "--grant-ttl", "60")
    assert one.returncode == 0, one.stderr
    assert f"approval session {session_id}: pending" in one.stdout
    after = session_of(replica, session_id)
    assert [c["status"] for c in after["tool_calls"]] == ["approved", "pending"]
    assert after["tool_calls"][0]["decision"]["arguments_sha256"] == first["arguments_sha256"]
    granted = httpx.get(
        f"{replica.url}/v1/audit",
        params={"session": session_id, "event": "granted"},
        headers=bearer("key-approver"),
    ).json()["data"]
    assert [(e["call"], e["detail"]["ttl_s"]) for e in granted] == [(first["id"], 60)]

    rest = cli(replica.url, "approve", session_id)
    assert rest.returncode == 0, rest.stderr
    assert session_of(replica, session_id)["tool_calls"][1]["decision"]["decision"] == "approve"
    assert held.wait().text == "getStringLength returned 3 and getStringLength returned 5."
    assert second["id"] in rest.stdout


def test_edit_and_respond_change_what_the_model_gets(replica: Replica) -> None:
    edited = hold(replica, "use getStringLength on 'abc'")
    session_id = edited.approval["id"]
    [call] = edited.approval["tool_calls"]
    not_json = cli(replica.url, "edit", session_id, "--call", call["id"], "--arguments", "{x")
    assert not_json.returncode == 2 and "not valid JSON" in not_json.stderr
    invalid = ["--call", call["id"], "--arguments", '{"text": 5}']
    refused = cli(replica.url, "edit", session_id, *invalid)
    assert refused.returncode == 1
    assert refused.stderr.startswith("gateway-approvals: refused: ")
    assert "(param: arguments.text)" in refused.stderr
    good = ["--call", call["id"], "--arguments", '{"text": "hello world"}']
    assert cli(replica.url, "edit", session_id, *good).returncode == 0
    decision = session_of(replica, session_id)["tool_calls"][0]["decision"]
    assert decision["decision"] == "edit" and decision["arguments"] == {"text": "hello world"}
    assert "11" in edited.wait().text

    responded = hold(replica, "use getStringLength on 'abc'")
    [call] = responded.approval["tool_calls"]
    result = ["--call", call["id"], "--result", "42"]
    assert cli(replica.url, "respond", responded.approval["id"], *result).returncode == 0
    assert session_of(replica, responded.approval["id"])["tool_calls"][0]["status"] == "responded"
    assert responded.wait().text == "getStringLength returned 42."


def test_refusals_are_one_line_with_exit_status_1(replica: Replica) -> None:
    held = hold(replica, "use getStringLength on 'abc'", requester="dual")
    session_id = held.approval["id"]

    def refusal(*args: str, key: str | None = "approver") -> str:
        done = cli(replica.url, *args, key=key)
        assert done.returncode == 1, (done.stdout, done.stderr)
        assert done.stderr.count("\n") == 1 and done.stderr.startswith("gateway-approvals: ")
        return done.stderr

    assert "set GATEWAY_API_KEY" in refusal("list", key=None)
    assert "does not know the key in GATEWAY_API_KEY" in refusal("list", key="nobody")
    assert "needs the role approver" in refusal("approve", session_id, key="requester")
    assert "self-approval refused" in refusal("approve", session_id, key="dual")
    assert "no approval session 'as_nope'" in refusal("show", "as_nope")
    assert "no call 'call_nope'" in refusal("approve", session_id, "--call", "call_nope")
    assert "no call 'x'" in refusal("reject", session_id, "--call", "x", "--reason", "r")
    reason = "x" * 2001
    [call] = held.approval["tool_calls"]
    bad = refusal("reject", session_id, "--call", call["id"], "--reason", reason)
    assert "refused: " in bad and "(param: calls.0.reason)" in bad

    assert cli(replica.url, "reject", session_id, "--reason", "no").returncode == 0
    conflict = refusal("approve", session_id)
    assert f"{call['id']} already decided by approver: reject ('no')" in conflict
    held.wait()

    port = free_port()
    unreachable = refusal("--url", f"http://127.0.0.1:{port}", "list")
    assert f"cannot reach the gateway at http://127.0.0.1:{port}" in unreachable

    for usage in (["approve"], ["reject", session_id], ["frobnicate"], []):
        assert cli(replica.url, *usage).returncode == 2


def test_a_decision_after_the_deadline_says_expired(make_stack: StackFactory) -> None:
    replica = make_stack(approval_timeout_s="2").replicas[0]  # open: no keys
    session = open_pending(replica)
    listed = cli(replica.url, "list", key=None)
    assert listed.returncode == 0 and session["id"] in listed.stdout
    time.sleep(max(0.0, session["expires_at"] - time.time()) + 0.2)
    late = cli(replica.url, "approve", session["id"], key=None)
    assert late.returncode == 1
    assert f"approval session {session['id']!r} expired" in late.stderr


class Output:
    """A child's output stream, read in a thread as it comes (prompts end without a new
    line, so it is read in chunks, not lines); `expect` waits for text to appear."""

    def __init__(self, stream: IO[bytes]) -> None:
        self._text = ""
        self._seen = 0
        self._changed = threading.Condition()
        self._thread = threading.Thread(target=self._read, args=(stream,), daemon=True)
        self._thread.start()

    def _read(self, stream: IO[bytes]) -> None:
        decoder = codecs.getincrementaldecoder("utf-8")()
        while chunk := os.read(stream.fileno(), 65536):
            with self._changed:
                self._text += decoder.decode(chunk)
                self._changed.notify_all()

    def expect(self, text: str, timeout: float = TIMEOUT_S) -> str:
        """Wait until `text` appears after what earlier calls consumed; everything up to
        and including it, which is consumed."""
        with self._changed:
            found = self._changed.wait_for(lambda: text in self._text[self._seen :], timeout)
            assert found, f"no {text!r} in {self._text[self._seen :]!r}"
            end = self._text.index(text, self._seen) + len(text)
            shown, self._seen = self._text[self._seen : end], end
            return shown

    def rest(self) -> str:
        self._thread.join(TIMEOUT_S)
        return self._text[self._seen :]


class Watcher:
    """`gateway-approvals watch` as a child process, answered through its stdin."""

    def __init__(self, url: str, key: str) -> None:
        self.process = subprocess.Popen(
            [sys.executable, "-m", "gateway.approvals_cli", "watch"],
            env=cli_env(url, key),
            cwd=ROOT,
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
        )
        assert self.process.stdout is not None and self.process.stderr is not None
        self.out = Output(self.process.stdout)
        self.err = Output(self.process.stderr)

    def answer(self, *lines: str) -> None:
        assert self.process.stdin is not None
        self.process.stdin.write("".join(f"{line}\n" for line in lines).encode())
        self.process.stdin.flush()

    def end_input(self) -> int:
        """Close stdin; the exit status."""
        assert self.process.stdin is not None
        self.process.stdin.close()
        return self.process.wait(TIMEOUT_S)

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.kill()
            self.process.wait(TIMEOUT_S)


@pytest.fixture
def watchers() -> Iterator[list[Watcher]]:
    started: list[Watcher] = []
    yield started
    for watcher in started:
        watcher.stop()


def watch(replica: Replica, key: str, watchers: list[Watcher]) -> Watcher:
    watcher = Watcher(replica.url, key)
    watchers.append(watcher)
    return watcher


def test_watch_decides_calls_requested_through_the_other_replica(
    stack: Stack, watchers: list[Watcher]
) -> None:
    near, far = stack.replicas
    watcher = watch(near, "w1-approver", watchers)
    watcher.err.expect(f"watching {near.url}: 0 pending")

    held = hold(far, "use getStringLength on 'abc'", requester="w1-requester")
    [call] = held.approval["tool_calls"]
    shown = watcher.out.expect(QUESTION)
    assert f"approval session {held.approval['id']}: pending" in shown
    assert "user: use getStringLength on 'abc'" in shown
    assert f"call {call['id']}: getStringLength (pending)" in shown
    assert f"why: {call['policy_reason']}" in shown and '"text": "abc"' in shown
    # The person takes longer than two heartbeats: the client's stream stays open meanwhile.
    time.sleep(2.5)
    assert held.finished_at == 0.0 and held.error is None
    watcher.answer("y")
    watcher.out.expect("approved by w1-approver")
    assert held.wait().text == "getStringLength returned 3."

    two = hold(far, "use getStringLength on 'one' and getStringLength on 'three'", "w1-requester")
    first, second = two.approval["tool_calls"]
    assert f"call {first['id']}" in watcher.out.expect(QUESTION)
    watcher.answer("n")
    watcher.out.expect("reason: ")
    watcher.answer("too long")
    assert f"call {second['id']}" in watcher.out.expect(QUESTION)
    watcher.answer("e", "{bad")
    watcher.out.expect("new arguments")
    assert "not valid JSON" in watcher.out.expect("new arguments")
    watcher.answer('{"text": 5}')
    assert "(param: arguments.text)" in watcher.out.expect("new arguments")
    watcher.answer('{"text": "hello"}')
    watcher.out.expect('approved by w1-approver, edited to {"text": "hello"}')

    text = two.wait().text
    assert "too long" in text and text.endswith("5.")
    decided = session_of(far, two.approval["id"], "w1-approver")["tool_calls"]
    assert [c["status"] for c in decided] == ["rejected", "succeeded"]
    assert decided[1]["decision"]["arguments"] == {"text": "hello"}
    assert watcher.end_input() == 0
    assert "stdin ended" in watcher.err.rest()


def test_watch_offers_what_was_pending_and_skips_what_a_colleague_decided(
    replica: Replica, watchers: list[Watcher]
) -> None:
    prompt = "use getStringLength on 'abc'"
    skipped, raced, settled = (hold(replica, prompt, "w2-requester") for _ in range(3))
    ids = [h.approval["id"] for h in (skipped, raced, settled)]
    watcher = watch(replica, "w2-approver", watchers)

    def colleague_rejects(held: HeldStream) -> None:
        response = decide(
            replica.url, held.approval["id"], "reject", "mine", key="key-w2-colleague"
        )
        assert response.status_code == 200, response.text

    # Soonest deadline first: the sessions opened before watch started, in order.
    assert f"approval session {ids[0]}" in watcher.out.expect(QUESTION)
    colleague_rejects(settled)
    watcher.answer("s")
    watcher.out.expect(f"skipped {skipped.approval['tool_calls'][0]['id']}")

    assert f"approval session {ids[1]}" in watcher.out.expect(QUESTION)
    colleague_rejects(raced)
    watcher.answer("y")
    assert "already decided by w2-colleague" in watcher.out.expect("skipped")
    shown = watcher.out.expect("skipped")
    assert ids[2] in shown and "already decided by w2-colleague" in shown
    assert watcher.end_input() == 0
    assert QUESTION not in watcher.out.rest()

    assert session_of(replica, ids[0], "w2-approver")["status"] == "pending"
    [call] = skipped.approval["tool_calls"]
    item = [{"tool_call_id": call["id"], "decision": "reject", "reason": "cleanup"}]
    assert decide_calls(replica.url, ids[0], item, key="key-w2-colleague").status_code == 200
    for held in (skipped, raced, settled):
        held.wait()


def test_watch_re_attaches_after_losing_its_replica_and_misses_nothing(
    stack: Stack, watchers: list[Watcher]
) -> None:
    near, far = stack.replicas
    watcher = watch(near, "w3-approver", watchers)
    watcher.err.expect(f"watching {near.url}: 0 pending")

    near.process.stop()
    watcher.err.expect("feed interrupted")
    held = hold(far, "use getStringLength on 'abc'", requester="w3-requester")
    near.process.popen = None
    near.start()
    watcher.err.expect("feed re-attached")
    assert f"approval session {held.approval['id']}" in watcher.out.expect(QUESTION)
    watcher.answer("y")
    watcher.out.expect("approved by w3-approver")
    assert held.wait().text == "getStringLength returned 3."
    assert watcher.end_input() == 0


def test_watch_refuses_a_requester_key(replica: Replica, watchers: list[Watcher]) -> None:
    watcher = watch(replica, "requester", watchers)
    assert watcher.process.wait(TIMEOUT_S) == 1
    assert "needs the role approver" in watcher.err.rest()
