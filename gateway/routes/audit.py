"""`GET /v1/audit`: the audit log, filtered and paged.

The API filters by session, tool, actor, event and time (`since`/`until`, unix seconds),
pages with `after` (the last entry id seen) and returns `limit` entries in time order, or
a few more when entries of other tenants share the last one's id (so that `after` never
skips them). Approvers read their own tenant's stream only; admins read every tenant's,
merged, or one with `tenant`.
"""

from __future__ import annotations

import re
from typing import Any, Literal

from pydantic import BaseModel
from starlette.requests import Request
from starlette.responses import JSONResponse

from core.errors import Forbidden, InvalidRequest, RedisUnavailable
from gateway.auth import Principal
from gateway.openapi import Operation, Param, Reply
from gateway.requests import query_int
from gateway.routes.guard import replica_of

_FILTERS = ("session", "tool", "actor", "event")
_ENTRY_ID = re.compile(r"([0-9]{1,19})-([0-9]{1,19})")
_MAX_ID_PART = 2**63 - 1
_SECONDS = re.compile(r"([0-9]{1,12})(?:\.([0-9]+))?")


class AuditEntryView(BaseModel):
    """One audit entry, as the API, the feed and the export show it (`core.audit.as_json`)."""

    id: str
    """The stream entry id (`<unix ms>-<n>`): orders entries, and pages with `after`."""
    at: float
    """Unix seconds."""
    event: str
    session: str
    tool: str
    call: str
    actor: str
    tenant: str
    detail: dict[str, Any]


class AuditPage(BaseModel):
    """`GET /v1/audit`: entries in time order."""

    object: Literal["list"] = "list"
    data: list[AuditEntryView]
    last_id: str | None
    """The last entry's id: the next page's `after` (null when the page is empty)."""


async def list_audit(request: Request, caller: Principal) -> JSONResponse:
    """Guarded: `approver`."""
    replica = replica_of(request)
    params = request.query_params
    limit = query_int(params, "limit", 100, 1, 1000)
    after = entry_id(params.get("after"), "after")
    wanted = {name: params[name] for name in _FILTERS if params.get(name)}
    admin = "admin" in caller.roles
    found = await replica.audit.page(
        tenant=(params.get("tenant") or None) if admin else caller.tenant,
        since_ms=_time_ms(params.get("since"), "since"),
        until_ms=_time_ms(params.get("until"), "until"),
        after=after,
        limit=limit,
        accept=lambda entry: all(entry.get(name) == value for name, value in wanted.items()),
    )
    last = found[-1]["id"] if found else None
    page = AuditPage.model_validate({"data": found, "last_id": last})
    return JSONResponse(page.model_dump())


def entry_id(raw: str | None, name: str) -> str | None:
    """An audit entry id given as `name`, as a stream id Redis takes (two parts of ASCII
    digits, each within int64)."""
    if raw is None:
        return None
    found = _ENTRY_ID.fullmatch(raw)
    if found is None or any(int(part) > _MAX_ID_PART for part in found.groups()):
        raise InvalidRequest(
            f"{name}: must be an audit entry id like '1795611731579-0'", param=name
        )
    millis, seq = (int(part) for part in found.groups())
    return f"{millis}-{seq}"


def _time_ms(raw: str | None, name: str) -> int | None:
    """`since`/`until` (unix seconds, plain decimal: no sign, exponent, inf or nan) in ms."""
    if raw is None:
        return None
    found = _SECONDS.fullmatch(raw)
    if found is None:
        raise InvalidRequest(f"{name}: must be a unix time in seconds, like 1795611731.5")
    seconds, fraction = found.group(1), found.group(2) or ""
    return int(seconds) * 1000 + int(fraction[:3].ljust(3, "0"))


_LIMIT_PARAM = {"type": "integer", "minimum": 1, "maximum": 1000, "default": 100}
_ENTRY_ID_PARAM = {"type": "string", "pattern": f"^(?:{_ENTRY_ID.pattern})$"}
_SECONDS_PARAM = {"type": "string", "pattern": f"^(?:{_SECONDS.pattern})$"}
OPERATIONS = (
    Operation(
        "GET",
        "/v1/audit",
        "Audit entries, filtered and paged, in time order",
        {200: Reply("A page of entries", AuditPage)},
        description="Needs the role `approver`. Approvers read their own tenant's entries; "
        "admins every tenant's, merged (or one with `tenant`). A page holds `limit` entries, "
        "or a few more when entries of other tenants share the last one's id, so that `after` "
        "never skips them.",
        params=(
            Param("limit", "Entries per page", schema=_LIMIT_PARAM),
            Param("after", "The last entry id seen (`<ms>-<n>`)", schema=_ENTRY_ID_PARAM),
            *(Param(name, f"Only entries whose `{name}` is this") for name in _FILTERS),
            Param("since", "From this unix time in seconds", schema=_SECONDS_PARAM),
            Param("until", "Up to this unix time in seconds", schema=_SECONDS_PARAM),
            Param("tenant", "An admin's choice of one tenant"),
        ),
        errors=(InvalidRequest, Forbidden, RedisUnavailable),
    ),
)
