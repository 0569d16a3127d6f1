"""Deciding a session: who may, what each decision means, and what is recorded.

Both decision endpoints (`POST /v1/approvals/{id}/decision` and the first version's
`POST /v1/chat/approve`) come here. The order is fixed: read the session, check the
caller (tenant, roles the tool's policy names, self-approval), validate every item
(call ids, edited arguments against the tool's schema and policy), then one atomic
script stores the decisions. Every refusal about an existing session is audited and
changes nothing.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any

import orjson
import structlog

from core.arguments import ArgumentChecker, ArgumentError
from core.audit import AuditEntry
from core.errors import (
    EditRefused,
    Forbidden,
    GatewayError,
    InvalidArguments,
    InvalidRequest,
    SelfApproval,
    UnknownToolCall,
    WrongProtocol,
)
from core.grants import Grant, GrantScope
from core.records import (
    CallStatus,
    SessionRecord,
    SessionStatus,
    ToolCallView,
)
from core.settings import PolicyMode
from core.store import CallDecisionItem
from gateway import traces
from gateway.auth import Principal
from gateway.opening import client_checkers
from gateway.replica import Replica
from gateway.requests import CallDecision, DecisionRequest

log = structlog.stdlib.get_logger(__name__)


async def decide(
    replica: Replica,
    principal: Principal,
    session_id: str,
    body: DecisionRequest,
    protocol: str | None = None,
) -> SessionRecord:
    """Apply a decision request for `principal`; returns the session after it. With
    `protocol`, only a session of that protocol may be decided here."""
    structlog.contextvars.bind_contextvars(session_id=session_id)
    record = await replica.store.get(session_id, view_only=True)
    try:
        principal.require_sees(record.view)
        principal.require("approver")
        if protocol is not None and record.view.protocol != protocol:
            # Its own holder continues it; a continuation from here too would run it twice.
            raise WrongProtocol(
                f"approval session {session_id!r} belongs to the {record.view.protocol} "
                f"protocol; decide it with POST /v1/approvals/{session_id}/decision"
            )
        if body.calls is not None:
            client = await _client_checkers(replica, record, body)
            items = [_prepare(replica, principal, record, c, client) for c in body.calls]
            _authorize(replica, principal, record, [i.call_id for i in items])
            outcome, after = await replica.store.decide_calls(session_id, items, record.view.tenant)
            applied = outcome != "repeat"
        else:
            assert body.decision is not None
            pending = [c.id for c in record.view.tool_calls if c.status is CallStatus.PENDING]
            _authorize(replica, principal, record, pending)
            applied, after = await replica.store.decide_all(
                session_id, body.decision, body.reason, principal.name, record
            )
    except GatewayError as error:
        await _audit_refusal(replica, principal, record, error)
        raise
    status = after.view.status.value
    log.info("session_decided", actor=principal.name, applied=applied, status=status)
    if applied:
        await _record(replica, principal, record, after, body)
        if after.status is not SessionStatus.PENDING:  # this decision ended the wait
            traces.wait_ended(after)
    return after


def _authorize(
    replica: Replica, principal: Principal, record: SessionRecord, call_ids: Iterable[str]
) -> None:
    session = record.view
    if (
        not replica.settings.allow_self_approval
        and replica.settings.api_keys
        and principal.name == session.requester
    ):
        raise SelfApproval(f"{principal.name!r} requested these calls and may not decide them")
    names = {c.id: c.name for c in session.tool_calls}
    for call_id in call_ids:
        name = names.get(call_id)
        if name is None:
            continue  # unknown ids are refused by the store
        allowed = replica.toolbox.approvers(name)
        if "admin" not in principal.roles and not set(allowed) & principal.roles:
            raise Forbidden(f"deciding {name!r} needs one of the roles {sorted(allowed)}")


async def _client_checkers(
    replica: Replica, record: SessionRecord, body: DecisionRequest
) -> Mapping[str, ArgumentChecker]:
    """The schemas the request declared, when an edit needs them (read from the session's
    conversation, which `record` was read without)."""
    edits = [c for c in body.calls or () if c.decision == "edit"]
    if not any(_call(record, c.tool_call_id).side == "client" for c in edits):
        return {}
    full = await replica.store.get(record.id)
    return client_checkers(full.continuation.client_tools)


def _prepare(
    replica: Replica,
    principal: Principal,
    record: SessionRecord,
    item: CallDecision,
    client: Mapping[str, ArgumentChecker],
) -> CallDecisionItem:
    call = _call(record, item.tool_call_id)
    longest = replica.settings.grant_max_ttl_s
    if item.grant is not None and item.grant.ttl_s > longest:
        raise InvalidRequest(f"grant.ttl_s: at most {longest} seconds (grant_max_ttl_s)")
    arguments = (
        _checked_edit(replica, call, item.arguments or {}, client)
        if item.decision == "edit"
        else None
    )
    result = None
    if item.decision == "respond":
        result = item.result if isinstance(item.result, str) else orjson.dumps(item.result).decode()
    return CallDecisionItem.build(
        call,
        item.decision,
        item.reason,
        principal.name,
        arguments=arguments,
        result=result,
        expected_sha256=item.arguments_sha256 or "",
    )


def _call(record: SessionRecord, call_id: str) -> ToolCallView:
    for call in record.view.tool_calls:
        if call.id == call_id:
            return call
    raise UnknownToolCall(f"approval session {record.id!r} has no tool call {call_id!r}")


def _checked_edit(
    replica: Replica,
    call: ToolCallView,
    arguments: dict[str, Any],
    client: Mapping[str, ArgumentChecker],
) -> dict[str, Any]:
    """Edited arguments that fit the tool's schema strictly (a client tool's: the schema the
    request declared) and that policy would not deny."""
    toolbox = replica.toolbox
    checker = client.get(call.name) if call.side == "client" else toolbox.checkers.get(call.name)
    if checker is None or call.policy is PolicyMode.DENY:
        raise EditRefused(f"{call.name!r} calls cannot run, edited or not")
    if not toolbox.editable(call.name):
        raise EditRefused(f"policy does not allow editing {call.name!r} calls")
    try:
        checker.check(arguments)
    except ArgumentError as error:
        raise InvalidArguments(str(error), param=error.path) from error
    if toolbox.verdict(call.name, arguments, side=call.side).mode is PolicyMode.DENY:
        raise EditRefused(f"policy denies {call.name!r} with the edited arguments")
    return arguments


async def _record(
    replica: Replica,
    principal: Principal,
    before: SessionRecord,
    after: SessionRecord,
    body: DecisionRequest,
) -> None:
    """Store the grants of what this request decided, with their audit entries. (The
    decisions' own entries and webhook event were written with them: `core.outbox`.)"""
    was_pending = {c.id for c in before.view.tool_calls if c.status is CallStatus.PENDING}
    decided = [
        c
        for c in after.view.tool_calls
        if c.id in was_pending
        and c.decision is not None
        and c.decision.actor == principal.name
        and c.status is not CallStatus.PENDING
    ]
    replica.metrics.decided(
        (c.decision for c in decided if c.decision is not None), before.view.created_at
    )
    session = after.view
    grants = {c.tool_call_id: c.grant for c in body.calls or () if c.grant is not None}
    scope = GrantScope(session.tenant, session.requester, session.conversation)
    added, entries = [], []
    for call in decided:
        grant = grants.get(call.id)
        if grant is None or call.decision is None:
            continue
        sha = call.decision.arguments_sha256 if grant.same_arguments else "*"
        added.append(Grant(call.name, sha, principal.name, grant.ttl_s))
        entries.append(
            AuditEntry.of_call(
                "granted",
                session,
                call,
                principal.name,
                conversation=session.conversation,
                arguments_sha256=sha,
                ttl_s=grant.ttl_s,
            )
        )
    await replica.grants.add(scope, added, replica.audit, entries)


async def _audit_refusal(
    replica: Replica, principal: Principal, record: SessionRecord, error: GatewayError
) -> None:
    entry = AuditEntry(
        "refused",
        session=record.id,
        actor=principal.name,
        tenant=record.view.tenant,
        detail={"code": error.code, "message": error.message},
    )
    await replica.audit.append([entry])
