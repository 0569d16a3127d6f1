"""`GET /v1/audit` and the `gateway-audit export` command.

The API filters by session, tool, actor, event and time (`since`/`until`, unix seconds),
pages with `after` (the last entry id seen) and returns `limit` entries in time order, or
a few more when entries of other tenants share the last one's id (so that `after` never
skips them). Approvers read their own tenant's stream only; admins read every tenant's,
merged, or one with `tenant`. The export writes every tenant's, or one with `--tenant`.
"""

from __future__ import annotations

import argparse
import asyncio
import re
import sys
from typing import Any, Literal

import orjson
from pydantic import BaseModel
from starlette.requests import Request
from starlette.responses import JSONResponse

from core.audit import AuditLog
from core.connect import connect
from core.errors import Forbidden, InvalidRequest, RedisUnavailable
from core.keys import Keys
from core.settings import Settings
from gateway.auth import principal_of
from gateway.openapi import Operation, Param, Reply
from gateway.replica import Replica
from gateway.requests import query_int

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


async def list_audit(request: Request) -> JSONResponse:
    principal = principal_of(request)
    principal.require("approver")
    replica: Replica = request.app.state.replica
    params = request.query_params
    limit = query_int(params, "limit", 100, 1, 1000)
    after = entry_id(params.get("after"), "after")
    wanted = {name: params[name] for name in _FILTERS if params.get(name)}
    admin = "admin" in principal.roles
    found = await replica.audit.page(
        tenant=(params.get("tenant") or None) if admin else principal.tenant,
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


async def export(
    settings: Settings, since: float | None, until: float | None, tenant: str | None = None
) -> int:
    """Write the audit log as JSON lines to stdout, every tenant's merged in time order (or
    one `tenant`'s); returns how many entries."""
    redis = connect(settings, "gateway-audit")
    keys = Keys.of(settings.key_prefix, cluster=settings.redis_cluster)
    audit = AuditLog(redis, keys, settings.audit_maxlen, settings.audit_retention_s)
    written = 0
    try:
        entries = audit.entries(
            tenant=tenant,
            since_ms=None if since is None else int(since * 1000),
            until_ms=None if until is None else int(until * 1000),
        )
        async for entry in entries:
            sys.stdout.buffer.write(orjson.dumps(entry, option=orjson.OPT_APPEND_NEWLINE))
            written += 1
        return written
    finally:
        sys.stdout.flush()
        await redis.aclose()


def main() -> None:
    """`gateway-audit export [--since T] [--until T] [--tenant NAME] > audit.jsonl`."""
    parser = argparse.ArgumentParser(description="Approval gateway audit log")
    commands = parser.add_subparsers(dest="command", required=True)
    exporter = commands.add_parser("export", help="write the audit log as JSON lines")
    exporter.add_argument("--since", type=float, help="unix seconds (inclusive)")
    exporter.add_argument("--until", type=float, help="unix seconds (inclusive)")
    exporter.add_argument("--tenant", help="only this tenant's entries (default: every tenant)")
    args = parser.parse_args()
    count = asyncio.run(export(Settings(), args.since, args.until, args.tenant))
    print(f"exported {count} audit entries", file=sys.stderr)


_LIMIT_PARAM = {"type": "integer", "minimum": 1, "maximum": 1000, "default": 100}
_ENTRY_ID_PARAM = {"type": "string", "pattern": f"^(?:{_ENTRY_ID.pattern})$"}
_SECONDS_PARAM = {"type": "string", "pattern": f"^(?:{_SECONDS.pattern})$"}
OPERATIONS = (
    Operation(
        "GET",
        "/v1/audit",
        "Audit entries, filtered and paged, in time order",
        {200: Reply("A page of entries", AuditPage)},
        description="Approvers read their own tenant's entries; admins every tenant's, merged "
        "(or one with `tenant`). A page holds `limit` entries, or a few more when entries of "
        "other tenants share the last one's id, so that `after` never skips them.",
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


if __name__ == "__main__":
    main()
