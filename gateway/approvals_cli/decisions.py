"""The `calls` items of a decision body, and the typed input that goes into them."""

from __future__ import annotations

import json
from collections.abc import Sequence

from gateway.approvals_cli.client import CliError, Json
from gateway.approvals_cli.render import pending_calls


def find_call(session: Json, call_id: str) -> Json:
    """The call `call_id` of `session`; `CliError` naming the calls it has when none is."""
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


def chosen_calls(session: Json, call_ids: Sequence[str] | None) -> list[Json]:
    """The named calls, or every pending one when none is named."""
    if call_ids:
        return [find_call(session, c) for c in call_ids]
    return pending_calls(session)


def json_object(raw: str) -> Json:
    """`raw` parsed as a JSON object; `ValueError` saying why not."""
    try:
        value = json.loads(raw)
    except json.JSONDecodeError as error:
        raise ValueError(f"not valid JSON: {error}") from error
    if not isinstance(value, dict):
        raise ValueError(f"arguments must be a JSON object, not {type(value).__name__}")
    return value
