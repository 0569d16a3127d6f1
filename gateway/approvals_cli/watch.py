"""`watch`: follow the live feed and ask about each pending call once, on stdin.

It asks about the calls already waiting when the feed says `ready` (soonest deadline
first), then about each newly `requested` one, reading one answer per line from stdin (a
pipe works as well as a terminal; answers typed before a question is shown are ignored).
It ends when stdin ends, or with the feed's error (a refused key).
"""

from __future__ import annotations

import argparse
import sys
import threading
import time
from collections.abc import Callable
from enum import Enum
from typing import TextIO

from core.records import CallStatus, SessionStatus
from gateway.approvals_cli.client import RECONNECT_S, ApiError, Gateway, Json, Unreachable
from gateway.approvals_cli.decisions import call_item, find_call, json_object
from gateway.approvals_cli.inbox import (
    EndOfInput,
    FeedFailed,
    FeedFollower,
    Inbox,
    Notice,
    read_lines,
)
from gateway.approvals_cli.render import (
    call_text,
    clean,
    context_text,
    explain,
    outcome_text,
    pending_calls,
    session_header,
    settled_text,
)

QUESTION = "approve? [y]es / [n]o / [e]dit / [s]kip: "


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


def run_watch(gateway: Gateway, args: argparse.Namespace) -> None:
    """The feed and stdin, each read by a thread into one `Inbox`; `Watch` answers them."""
    inbox = Inbox()
    FeedFollower(gateway, inbox).start()
    threading.Thread(target=read_lines, args=(sys.stdin, inbox), daemon=True).start()
    try:
        Watch(gateway, inbox, sys.stdout, sys.stderr).run()
    except EndOfInput:
        print("\nstdin ended; stopped watching", file=sys.stderr)
