"""`gateway-approvals`: see and decide held tool calls from a terminal.

    gateway-approvals list [--json]
    gateway-approvals show ID [--json]
    gateway-approvals approve ID [--call C ...] [--grant-ttl S]
    gateway-approvals reject ID --reason TEXT [--call C ...]
    gateway-approvals edit ID --call C --arguments JSON [--grant-ttl S]
    gateway-approvals respond ID --call C --result TEXT
    gateway-approvals watch

It is a client of the approvals API like any other: the gateway at `--url` (default
`GATEWAY_URL`, else http://127.0.0.1:8000), the key in `GATEWAY_API_KEY`, sent only as
`Authorization: Bearer <key>` (no key: an open gateway). An approve or edit of a named
call carries the arguments hash the session shows, so it holds only for what was seen.

`watch` follows `GET /v1/approvals/events` and asks about each pending call once, reading
one answer per line from stdin (a pipe works as well as a terminal; answers typed before a
question is shown are ignored). Exit status: 0 done, 1 the gateway refused or could not be
reached (one line on stderr says why), 2 a usage error.
"""

from __future__ import annotations

import argparse
import json
import os
import queue
import sys
import textwrap
import threading
import time
import unicodedata
from collections import deque
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from enum import Enum
from typing import Any, TextIO
from urllib.parse import quote

import httpx

from core.records import CallStatus, SessionStatus

Json = dict[str, Any]

DEFAULT_URL = "http://127.0.0.1:8000"
TIMEOUT_S = 30.0
FEED_IDLE_S = 60.0
"""Re-attach when the feed sends nothing, not even a heartbeat, for this long."""
RECONNECT_S = (0.25, 0.5, 1.0, 2.0)
"""Waits before successive re-attach attempts; the last one repeats."""
QUESTION = "approve? [y]es / [n]o / [e]dit / [s]kip: "


class CliError(Exception):
    """A failure reported as one line on stderr, with exit status 1."""


class Unreachable(CliError):
    """The gateway did not answer: connection refused, timed out or broken."""


class ApiError(CliError):
    """The gateway answered with an error body (`{"error": {message, param, code}}`)."""

    def __init__(self, status: int, code: str, message: str, param: str | None) -> None:
        super().__init__(message)
        self.status = status
        self.code = code
        self.message = message
        self.param = param


@dataclass(frozen=True)
class FeedEvent:
    """One event of the approvals feed: an audit entry, or `ready` (where the feed starts)."""

    id: str
    kind: str
    entry: Json


class Gateway:
    """The approvals API at `url`; its failures raised as `ApiError` or `Unreachable`."""

    def __init__(self, url: str, key: str) -> None:
        self.url = url.rstrip("/")
        self.key = key
        headers = {"Authorization": f"Bearer {key}"} if key else {}
        self._http = httpx.Client(base_url=self.url, headers=headers, timeout=TIMEOUT_S)

    def close(self) -> None:
        self._http.close()

    def pending(self) -> Json:
        """`GET /v1/approvals`: the list body, soonest deadline first."""
        return self._call("GET", "/v1/approvals", params={"limit": 1000})

    def session(self, session_id: str) -> Json:
        return self._call("GET", _session_path(session_id))

    def decide(self, session_id: str, body: Json) -> Json:
        """Post a decision; returns the session after it."""
        return self._call("POST", f"{_session_path(session_id)}/decision", json=body)

    @contextmanager
    def feed(self, last_event_id: str) -> Iterator[Iterator[FeedEvent]]:
        """The live feed's events, from just after `last_event_id` when one is given."""
        headers = {"Accept": "text/event-stream"}
        if last_event_id:
            headers["Last-Event-ID"] = last_event_id
        timeout = httpx.Timeout(TIMEOUT_S, read=FEED_IDLE_S)
        with (
            self._translated(),
            self._http.stream(
                "GET", "/v1/approvals/events", headers=headers, timeout=timeout
            ) as response,
        ):
            _raise_for(response)
            yield _sse_events(response.iter_lines())

    def _call(self, method: str, path: str, **options: Any) -> Json:
        with self._translated():
            response = self._http.request(method, path, **options)
        _raise_for(response)
        body: Json = response.json()
        return body

    @contextmanager
    def _translated(self) -> Iterator[None]:
        try:
            yield
        except httpx.ConnectError as error:
            raise Unreachable(
                f"cannot reach the gateway at {self.url} ({error}); "
                "is it running? (set --url or GATEWAY_URL)"
            ) from error
        except httpx.TransportError as error:
            raise Unreachable(f"lost the gateway at {self.url}: {error!r}") from error


def _session_path(session_id: str) -> str:
    return f"/v1/approvals/{quote(session_id, safe='')}"


def _raise_for(response: httpx.Response) -> None:
    if response.is_success:
        return
    response.read()
    try:
        error = response.json()["error"]
        code, message, param = str(error["code"]), str(error["message"]), error.get("param")
    except (ValueError, KeyError, TypeError):
        code, message, param = "", response.text[:200] or response.reason_phrase, None
    raise ApiError(response.status_code, code, message, param)


def _sse_events(lines: Iterator[str]) -> Iterator[FeedEvent]:
    """Server-sent events from a body's lines; comments (heartbeats) are skipped."""
    fields: dict[str, str] = {}
    for line in lines:
        if not line:
            if "data" in fields:
                entry = json.loads(fields["data"])
                yield FeedEvent(fields.get("id", ""), fields.get("event", "message"), entry)
            fields = {}
        elif not line.startswith(":"):
            name, _, value = line.partition(":")
            value = value.removeprefix(" ")
            more_data = name == "data" and name in fields
            fields[name] = f"{fields[name]}\n{value}" if more_data else value


# Rendering: everything the gateway sends is shown through `clean`.


def clean(text: str) -> str:
    """`text` safe for a terminal: control and format characters (escape sequences,
    carriage returns, bidi overrides) are shown as escapes; new lines and tabs stay."""
    return "".join(
        ch if ch in "\n\t" or unicodedata.category(ch) not in ("Cc", "Cf") else f"\\u{ord(ch):04x}"
        for ch in text
    )


def duration(seconds: float) -> str:
    """`seconds` as `45s`, `3m07s` or `2h05m`."""
    whole = max(0, int(seconds))
    if whole < 60:
        return f"{whole}s"
    if whole < 3600:
        return f"{whole // 60}m{whole % 60:02d}s"
    return f"{whole // 3600}h{whole % 3600 // 60:02d}m"


def pending_calls(session: Json) -> list[Json]:
    return [c for c in session["tool_calls"] if c["status"] == CallStatus.PENDING]


def pretty_json(value: Any) -> str:
    return clean(json.dumps(value, indent=2, ensure_ascii=False))


def list_lines(sessions: Sequence[Json], now: float) -> list[str]:
    """One aligned line per session: id, requester, age, time left, pending tools."""
    rows = [
        (
            clean(s["id"]),
            clean(s.get("requester", "")),
            f"{duration(now - s['created_at'])} old",
            f"{duration(s['expires_at'] - now)} left",
        )
        for s in sessions
    ]
    widths = [max(len(row[i]) for row in rows) for i in range(4)] if rows else []
    return [
        "  ".join(cell.ljust(width) for cell, width in zip(row, widths, strict=True))
        + "  "
        + clean(", ".join(c["name"] for c in pending_calls(session)))
        for row, session in zip(rows, sessions, strict=True)
    ]


def session_header(session: Json, now: float) -> str:
    """Who asked, when, how long is left, and whether untrusted output came before."""
    left = session["expires_at"] - now
    deadline = f"{duration(left)} left" if left > 0 else "past its deadline"
    header = (
        f"approval session {clean(session['id'])}: {clean(session['status'])}\n"
        f"  requested by {clean(session.get('requester', ''))} "
        f"(tenant {clean(session.get('tenant', ''))}), "
        f"{duration(now - session['created_at'])} ago, {deadline}"
    )
    if session.get("tainted"):
        header += "\n  untrusted tool output came into the conversation before these calls"
    return header


def context_text(context: Json | None) -> str:
    """The conversation the calls came from: the user's message, the model's text, the
    tool results since (untrusted ones marked)."""
    if not context:
        return ""
    parts = []
    for label, item in (
        ("user", context.get("user_message")),
        ("assistant", context.get("assistant_text")),
    ):
        if item and item.get("text"):
            parts.append(_context_item(label, item))
    for result in context.get("tool_results") or ():
        mark = " (untrusted)" if result.get("untrusted") else ""
        parts.append(_context_item(f"tool result {result.get('name', '')}{mark}", result))
    return "\n".join(["  context:", *parts]) if parts else ""


def _context_item(label: str, item: Json) -> str:
    cut = " [truncated]" if item.get("truncated") else ""
    text = textwrap.indent(clean(item.get("text", "")), "      ").lstrip()
    return f"    {clean(label)}: {text}{cut}"


def call_text(call: Json) -> str:
    """One call: tool, status, why policy asks, its arguments and what became of it."""
    lines = [
        f"  call {clean(call['id'])}: {clean(call['name'])} ({clean(call['status'])})",
        f"    why: {clean(call.get('policy_reason') or 'policy asks for approval')}",
        f"    arguments (sha256 {clean(call.get('arguments_sha256', ''))[:16]}…):",
        textwrap.indent(pretty_json(call.get("arguments", {})), "      "),
    ]
    if decision := call.get("decision"):
        lines.append(f"    decision: {decision_text(decision)}")
    if result := call.get("result"):
        lines.append(f"    result ({clean(result['status'])}): {clean(result['content'])}")
    return "\n".join(lines)


def decision_text(decision: Json) -> str:
    """`reject by bob ('not now')`, with edited arguments when there are some."""
    actor = clean(decision.get("actor", ""))
    return f"{clean(decision['decision'])} by {actor}{_details(decision)}"


def _details(decision: Json) -> str:
    """` ('not now')`, `, edited to {...}`: the reason and edited arguments, if any."""
    text = ""
    if decision.get("reason"):
        text += f" ({clean(repr(decision['reason']))})"
    if decision.get("arguments") is not None:
        text += f", edited to {clean(json.dumps(decision['arguments'], ensure_ascii=False))}"
    return text


def session_text(session: Json, now: float) -> str:
    """`show`: the whole session, readably."""
    parts = [session_header(session, now)]
    if context := context_text(session.get("context")):
        parts.append(context)
    parts.extend(call_text(call) for call in session["tool_calls"])
    return "\n".join(parts)


def outcome_text(session: Json, call_ids: Sequence[str] = ()) -> str:
    """After a decision: the session's status and each named call's (all when none named)."""
    calls = [c for c in session["tool_calls"] if not call_ids or c["id"] in call_ids]
    lines = [f"approval session {clean(session['id'])}: {clean(session['status'])}"]
    for call in calls:
        line = f"  {clean(call['id'])} {clean(call['name'])}: {clean(call['status'])}"
        if decision := call.get("decision"):
            line += f" by {clean(decision.get('actor', ''))}{_details(decision)}"
        lines.append(line)
    return "\n".join(lines)


def settled_text(session: Json, call: Json) -> str:
    """Why a call no longer waits for this approver."""
    decision = call.get("decision")
    if call["status"] == CallStatus.EXPIRED or (
        session["status"] == SessionStatus.EXPIRED and not decision
    ):
        return "expired before a decision"
    if decision:
        actor, kind = clean(decision.get("actor", "")), clean(decision["decision"])
        return f"already decided by {actor}: {kind}{_details(decision)}"
    return f"no longer pending (session {clean(session['status'])})"


# Decisions


def find_call(session: Json, call_id: str) -> Json:
    for call in session["tool_calls"]:
        if call["id"] == call_id:
            assert isinstance(call, dict)
            return call
    known = ", ".join(c["id"] for c in session["tool_calls"])
    raise CliError(f"approval session {session['id']} has no call {call_id!r} (it has: {known})")


def call_item(
    call: Json,
    kind: str,
    *,
    reason: str = "",
    arguments: Json | None = None,
    result: str | None = None,
    grant_ttl: int | None = None,
) -> Json:
    """One `calls` item; approve and edit are bound to the arguments hash that was shown."""
    item: Json = {"tool_call_id": call["id"], "decision": kind}
    if reason:
        item["reason"] = reason
    if kind in ("approve", "edit"):
        item["arguments_sha256"] = call["arguments_sha256"]
        if grant_ttl is not None:
            item["grant"] = {"ttl_s": grant_ttl}
    if arguments is not None:
        item["arguments"] = arguments
    if result is not None:
        item["result"] = result
    return item


def explain(error: ApiError, gateway: Gateway, session_id: str = "") -> str:
    """One line saying what went wrong and, where it helps, what to do."""
    status, message = error.status, clean(error.message)
    if status == 401:
        if not gateway.key:
            return f"{gateway.url} needs an API key: set GATEWAY_API_KEY to an approver's key"
        return f"{gateway.url} does not know the key in GATEWAY_API_KEY ({message})"
    if error.code == "self_approval":
        return f"self-approval refused: {message}; another approver must decide"
    if status == 403:
        prefix = "edit refused" if error.code == "edit_refused" else "forbidden"
        return f"{prefix}: {message}"
    if error.code == "session_not_found":
        return f"no approval session {session_id!r} (unknown, cleaned up, or another tenant's)"
    if error.code == "decision_conflict" and session_id:
        return f"approval session {session_id!r}: {conflict_text(gateway, session_id, message)}"
    if status == 409:
        return f"conflict ({clean(error.code)}): {message}"
    if status == 410:
        return f"approval session {session_id!r} expired: {message}"
    if status == 400:
        param = f" (param: {clean(error.param)})" if error.param else ""
        return f"refused: {message}{param}"
    return f"the gateway answered {status} {clean(error.code)}: {message}"


def conflict_text(gateway: Gateway, session_id: str, refusal: str) -> str:
    """Who decided the session's calls already, as the session shows it; else `refusal`,
    the gateway's own message."""
    try:
        session = gateway.session(session_id)
    except CliError:
        return refusal
    decided = [c for c in session["tool_calls"] if c.get("decision")]
    if not decided:
        return refusal
    return "; ".join(f"{clean(c['id'])} {settled_text(session, c)}" for c in decided)


# watch


@dataclass(frozen=True)
class Typed:
    """One line typed on stdin; `None` when stdin ended."""

    text: str | None


@dataclass(frozen=True)
class Notice:
    """Something about the feed itself, for stderr."""

    text: str


@dataclass(frozen=True)
class FeedFailed:
    """The feed cannot go on (its key was refused): watch ends with this error."""

    error: CliError


FeedItem = FeedEvent | Notice | FeedFailed


class EndOfInput(Exception):
    """stdin ended: nobody is left to answer, so watch stops."""


class Inbox:
    """What watch waits on, in arrival order: feed items and typed lines, put by threads."""

    def __init__(self) -> None:
        self._queue: queue.Queue[FeedItem | Typed] = queue.Queue()
        self._held: deque[FeedItem] = deque()

    def put(self, item: FeedItem | Typed) -> None:
        self._queue.put(item)

    def next_feed_item(self) -> FeedItem:
        """The next feed item; lines typed meanwhile answer nothing and are dropped."""
        if self._held:
            return self._held.popleft()
        while True:
            item = self._queue.get()
            if not isinstance(item, Typed):
                return item
            if item.text is None:
                raise EndOfInput

    def next_line(self) -> str:
        """The next typed line; feed items that come first are kept for later."""
        while True:
            item = self._queue.get()
            if not isinstance(item, Typed):
                self._held.append(item)
            elif item.text is None:
                raise EndOfInput
            else:
                return item.text

    def drop_typed_ahead(self) -> None:
        """Forget lines typed before a question is shown: no answer counts before it."""
        while True:
            try:
                item = self._queue.get_nowait()
            except queue.Empty:
                return
            if not isinstance(item, Typed):
                self._held.append(item)
            elif item.text is None:
                raise EndOfInput


class FeedFollower(threading.Thread):
    """Reads the approvals feed into an `Inbox`; after a network error it re-attaches with
    the id of the last event it got, and the gateway sends every event after that one."""

    def __init__(self, gateway: Gateway, inbox: Inbox) -> None:
        super().__init__(name="approvals-feed", daemon=True)
        self.gateway = gateway
        self.inbox = inbox
        self.last_event_id = ""
        self.failures = 0

    def run(self) -> None:
        while True:
            try:
                self._follow()
                reason = "the gateway ended the feed"
            except Unreachable as error:
                reason = str(error)
            except ApiError as error:
                if error.status < 500:
                    self.inbox.put(FeedFailed(error))
                    return
                reason = f"{error.status} {error.code}: {error.message}"
            except Exception as error:  # the thread's boundary: watch must hear of it
                self.inbox.put(FeedFailed(CliError(f"the feed broke: {error!r}")))
                return
            wait = RECONNECT_S[min(self.failures, len(RECONNECT_S) - 1)]
            if self.failures == 0:
                where = self.last_event_id or "the start"
                self.inbox.put(Notice(f"feed interrupted ({reason}); re-attaching after {where}"))
            self.failures += 1
            time.sleep(wait)

    def _follow(self) -> None:
        with self.gateway.feed(self.last_event_id) as events:
            for event in events:
                if self.failures:
                    self.inbox.put(Notice(f"feed re-attached after {self.last_event_id}"))
                    self.failures = 0
                self.last_event_id = event.id or self.last_event_id
                if event.kind == "error":  # the stream ends after it; re-attach then
                    message = event.entry.get("error", {}).get("message", "")
                    self.inbox.put(Notice(f"the feed reports an error: {message}"))
                self.inbox.put(event)


def read_lines(stream: TextIO, inbox: Inbox) -> None:
    """Put each line of `stream` into `inbox`, then `Typed(None)` at its end."""
    for line in stream:
        inbox.put(Typed(line.rstrip("\r\n")))
    inbox.put(Typed(None))


class Outcome(Enum):
    """What a posted answer leaves to do."""

    DONE = "done"
    """Decided, or nothing more can be done about the call here."""
    ASK_AGAIN = "ask again"
    """Ask the question again."""
    FIX_INPUT = "fix input"
    """The gateway refused what was typed (400): ask for it again."""


class Watch:
    """`watch`: offer each pending or newly requested call once, and post the answer."""

    def __init__(self, gateway: Gateway, inbox: Inbox, out: TextIO, err: TextIO) -> None:
        self.gateway = gateway
        self.inbox = inbox
        self.out = out
        self.err = err
        self.offered: set[tuple[str, str]] = set()
        self.introduced: set[str] = set()
        """Sessions whose header and context were shown."""
        self.caught_up = False

    def run(self) -> None:
        """Until stdin ends (`EndOfInput`) or the feed fails (its `CliError`)."""
        while True:
            item = self.inbox.next_feed_item()
            if isinstance(item, FeedFailed):
                raise item.error
            if isinstance(item, Notice):
                print(item.text, file=self.err, flush=True)
            elif item.kind == "ready" and not self.caught_up:
                self._offer_pending()
            elif item.kind == "requested":
                self._offer(str(item.entry["session"]), str(item.entry["call"]))

    def _offer_pending(self) -> None:
        # Read after `ready`: whatever is requested later comes as an event.
        self.caught_up = True
        sessions = self._patiently(self.gateway.pending)["data"]
        waiting = [(s["id"], c["id"]) for s in sessions for c in pending_calls(s)]
        print(f"watching {self.gateway.url}: {len(sessions)} pending", file=self.err, flush=True)
        for session_id, call_id in waiting:
            self._offer(session_id, call_id)

    def _offer(self, session_id: str, call_id: str) -> None:
        if (session_id, call_id) in self.offered:
            return
        self.offered.add((session_id, call_id))
        try:
            session = self._patiently(lambda: self.gateway.session(session_id))
        except ApiError as error:
            if error.status == 401:
                raise
            self._say(f"{clean(session_id)}: {explain(error, self.gateway, session_id)}")
            return
        call = find_call(session, call_id)
        if call["status"] != CallStatus.PENDING or session["status"] != SessionStatus.PENDING:
            self._say(f"{self._label(session, call)}: {settled_text(session, call)}; skipped")
            return
        self._show(session, call)
        self._ask(session, call)

    def _patiently(self, read: Callable[[], Json]) -> Json:
        """`read()`, retried while the gateway is unreachable or unavailable (503), as the
        feed re-attaches meanwhile."""
        attempt = 0
        while True:
            try:
                return read()
            except (Unreachable, ApiError) as error:
                if isinstance(error, ApiError) and error.status != 503:
                    raise
                if attempt == 0:
                    print(f"{error}; retrying", file=self.err, flush=True)
            time.sleep(RECONNECT_S[min(attempt, len(RECONNECT_S) - 1)])
            attempt += 1

    def _show(self, session: Json, call: Json) -> None:
        if session["id"] not in self.introduced:
            self.introduced.add(session["id"])
            self._say(f"\n{session_header(session, time.time())}")
            if context := context_text(session.get("context")):
                self._say(context)
        self._say(call_text(call))

    def _ask(self, session: Json, call: Json) -> None:
        self.inbox.drop_typed_ahead()
        while True:
            answer = self._prompt(QUESTION).strip().lower()
            if answer in ("s", "skip"):
                self._say(f"skipped {self._label(session, call)}; it stays pending")
                return
            if answer in ("y", "yes"):
                outcome = self._send(session, call, call_item(call, "approve"))
            elif answer in ("n", "no"):
                reason = self._prompt("reason: ").strip()
                outcome = self._send(session, call, call_item(call, "reject", reason=reason))
            elif answer in ("e", "edit"):
                outcome = self._edit(session, call)
            else:
                self._say("answer y, n, e or s")
                continue
            if outcome is Outcome.DONE:
                return

    def _edit(self, session: Json, call: Json) -> Outcome:
        while True:
            raw = self._prompt("new arguments (a JSON object; empty to go back): ").strip()
            if not raw:
                return Outcome.ASK_AGAIN
            try:
                arguments = json_object(raw)
            except ValueError as error:
                self._say(str(error))
                continue
            outcome = self._send(session, call, call_item(call, "edit", arguments=arguments))
            if outcome is not Outcome.FIX_INPUT:
                return outcome

    def _send(self, session: Json, call: Json, item: Json) -> Outcome:
        try:
            after = self.gateway.decide(session["id"], {"calls": [item]})
        except Unreachable as error:
            self._say(f"{error}; answer again")
            return Outcome.ASK_AGAIN
        except ApiError as error:
            return self._refused(session, call, error)
        self._say(outcome_text(after, [call["id"]]))
        return Outcome.DONE

    def _refused(self, session: Json, call: Json, error: ApiError) -> Outcome:
        """Say why the gateway refused the answer; 401 ends watch."""
        if error.status == 401:
            raise error
        if error.status == 400:
            self._say(explain(error, self.gateway))
            return Outcome.FIX_INPUT
        if error.code == "decision_conflict" or error.status in (404, 410):
            self._say(f"{self._label(session, call)}: {self._now_settled(session, call)}; skipped")
            return Outcome.DONE
        self._say(explain(error, self.gateway, session["id"]))
        return Outcome.ASK_AGAIN if error.code == "edit_refused" else Outcome.DONE

    def _now_settled(self, session: Json, call: Json) -> str:
        try:
            session = self.gateway.session(session["id"])
        except ApiError as error:
            return explain(error, self.gateway, session["id"])
        return settled_text(session, find_call(session, call["id"]))

    def _label(self, session: Json, call: Json) -> str:
        return f"{clean(call['id'])} ({clean(call['name'])}) in {clean(session['id'])}"

    def _say(self, text: str) -> None:
        print(text, file=self.out, flush=True)

    def _prompt(self, question: str) -> str:
        self.out.write(question)
        self.out.flush()
        return self.inbox.next_line()


# Commands


def run_list(gateway: Gateway, args: argparse.Namespace) -> None:
    listed = gateway.pending()
    if args.json:
        print(json.dumps(listed, indent=2))
        return
    if not listed["data"]:
        print("no pending approval sessions", file=sys.stderr)
    for line in list_lines(listed["data"], time.time()):
        print(line)


def run_show(gateway: Gateway, args: argparse.Namespace) -> None:
    session = gateway.session(args.id)
    print(json.dumps(session, indent=2) if args.json else session_text(session, time.time()))


def run_approve(gateway: Gateway, args: argparse.Namespace) -> None:
    if not args.call and args.grant_ttl is None:
        _decide(gateway, args.id, {"decision": "approve"})
        return
    session = gateway.session(args.id)
    calls = _chosen_calls(session, args.call)
    items = [call_item(c, "approve", grant_ttl=args.grant_ttl) for c in calls]
    _decide(gateway, args.id, {"calls": items} if items else {"decision": "approve"}, args.call)


def run_reject(gateway: Gateway, args: argparse.Namespace) -> None:
    if not args.call:
        _decide(gateway, args.id, {"decision": "reject", "reason": args.reason})
        return
    session = gateway.session(args.id)
    items = [call_item(c, "reject", reason=args.reason) for c in _chosen_calls(session, args.call)]
    _decide(gateway, args.id, {"calls": items}, args.call)


def run_edit(gateway: Gateway, args: argparse.Namespace) -> None:
    call = find_call(gateway.session(args.id), args.call)
    item = call_item(call, "edit", arguments=args.arguments, grant_ttl=args.grant_ttl)
    _decide(gateway, args.id, {"calls": [item]}, [args.call])


def run_respond(gateway: Gateway, args: argparse.Namespace) -> None:
    item = {"tool_call_id": args.call, "decision": "respond", "result": args.result}
    _decide(gateway, args.id, {"calls": [item]}, [args.call])


def run_watch(gateway: Gateway, args: argparse.Namespace) -> None:
    inbox = Inbox()
    FeedFollower(gateway, inbox).start()
    threading.Thread(target=read_lines, args=(sys.stdin, inbox), daemon=True).start()
    try:
        Watch(gateway, inbox, sys.stdout, sys.stderr).run()
    except EndOfInput:
        print("\nstdin ended; stopped watching", file=sys.stderr)


def _chosen_calls(session: Json, call_ids: Sequence[str] | None) -> list[Json]:
    """The named calls, or every pending one when none is named."""
    if call_ids:
        return [find_call(session, c) for c in call_ids]
    return pending_calls(session)


def _decide(
    gateway: Gateway, session_id: str, body: Json, call_ids: Sequence[str] | None = None
) -> None:
    print(outcome_text(gateway.decide(session_id, body), call_ids or ()))


# Arguments


def json_object(raw: str) -> Json:
    """`raw` parsed as a JSON object; `ValueError` saying why not."""
    try:
        value = json.loads(raw)
    except json.JSONDecodeError as error:
        raise ValueError(f"not valid JSON: {error}") from error
    if not isinstance(value, dict):
        raise ValueError(f"arguments must be a JSON object, not {type(value).__name__}")
    return value


def _json_argument(raw: str) -> Json:
    try:
        return json_object(raw)
    except ValueError as error:
        raise argparse.ArgumentTypeError(str(error)) from error


def _seconds(raw: str) -> int:
    if not raw.isascii() or not raw.isdigit() or int(raw) < 1:
        raise argparse.ArgumentTypeError(f"must be a whole number of seconds, not {raw!r}")
    return int(raw)


Command = Callable[[Gateway, argparse.Namespace], None]


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="gateway-approvals",
        description="See and decide the tool calls an approval gateway holds. "
        "The API key comes from GATEWAY_API_KEY.",
    )
    parser.add_argument(
        "--url",
        default=os.environ.get("GATEWAY_URL") or DEFAULT_URL,
        help="the gateway (default: GATEWAY_URL, else %(default)s)",
    )
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    def command(name: str, run: Command, help: str) -> argparse.ArgumentParser:
        sub = commands.add_parser(name, help=help, description=help)
        sub.set_defaults(run=run)
        return sub

    command("list", run_list, "one line per pending session").add_argument(
        "--json", action="store_true", help="print the API's JSON"
    )
    show = command("show", run_show, "one session, its context and its calls")
    show.add_argument("id")
    show.add_argument("--json", action="store_true", help="print the API's JSON")
    approve = command("approve", run_approve, "approve the named calls (default: all pending)")
    approve.add_argument("id")
    approve.add_argument("--call", action="append", help="a tool call id (repeatable)")
    _grant_option(approve)
    reject = command("reject", run_reject, "reject the named calls (default: all pending)")
    reject.add_argument("id")
    reject.add_argument("--reason", required=True, help="what the model is told")
    reject.add_argument("--call", action="append", help="a tool call id (repeatable)")
    edit = command("edit", run_edit, "run a call with other arguments")
    edit.add_argument("id")
    edit.add_argument("--call", required=True, help="the tool call id")
    edit.add_argument("--arguments", required=True, type=_json_argument, help="a JSON object")
    _grant_option(edit)
    respond = command("respond", run_respond, "give the model a result instead of running")
    respond.add_argument("id")
    respond.add_argument("--call", required=True, help="the tool call id")
    respond.add_argument("--result", required=True, help="the tool result the model gets")
    command("watch", run_watch, "follow the live feed and ask about each new call on stdin")
    return parser


def _grant_option(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--grant-ttl",
        type=_seconds,
        metavar="SECONDS",
        help="also allow the same call in this conversation without asking, for this long",
    )


def main(argv: Sequence[str] | None = None) -> None:
    """Parse the command line, run the command; exit 1 with one line on stderr on failure."""
    args = build_parser().parse_args(argv)
    gateway = Gateway(args.url, os.environ.get("GATEWAY_API_KEY", "").strip())
    try:
        args.run(gateway, args)
    except ApiError as error:
        _fail(explain(error, gateway, getattr(args, "id", "")))
    except CliError as error:
        _fail(str(error))
    except KeyboardInterrupt:
        sys.exit(130)
    finally:
        gateway.close()


def _fail(message: str) -> None:
    print(f"gateway-approvals: {message}", file=sys.stderr)
    sys.exit(1)


if __name__ == "__main__":
    main()
