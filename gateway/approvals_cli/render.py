"""Terminal text for what the gateway sends: lists, sessions, calls, decisions, refusals.

Everything the gateway sends is shown through `clean`: a tool's output cannot hide or
reorder what the approver reads.
"""

from __future__ import annotations

import json
import textwrap
import unicodedata
from collections.abc import Sequence
from typing import Any

from core.records import CallStatus, SessionStatus
from gateway.approvals_cli.client import ApiError, CliError, Gateway, Json


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


# Refusals: what went wrong, in one line


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
