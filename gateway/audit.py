"""`GET /v1/audit` and the `gateway-audit export` command.

The API filters by session, tool, actor, event and time (`since`/`until`, unix seconds),
pages with `after` (the last entry id seen) and returns at most `limit` entries in time
order. Approvers see their own tenant's entries; admins see every tenant's.
"""

from __future__ import annotations

import argparse
import asyncio
import re
import sys
from typing import Any

import orjson
from starlette.requests import Request
from starlette.responses import JSONResponse

from core.audit import AuditLog
from core.connect import connect
from core.errors import InvalidRequest
from core.keys import Keys
from core.settings import Settings
from gateway.auth import principal_of
from gateway.conversation import Engine
from gateway.requests import query_int

_FILTERS = ("session", "tool", "actor", "event")


async def list_audit(request: Request) -> JSONResponse:
    principal = principal_of(request)
    principal.require("approver")
    engine: Engine = request.app.state.engine
    params = request.query_params
    limit = query_int(params, "limit", 100, 1, 1000)
    after = params.get("after")
    if after is not None and not re.fullmatch(r"\d+-\d+", after):
        raise InvalidRequest("after: must be an audit entry id like '1795611731579-0'")
    wanted = {name: params[name] for name in _FILTERS if params.get(name)}
    if "admin" not in principal.roles:
        wanted["tenant"] = principal.tenant
    found: list[dict[str, Any]] = []
    entries = engine.audit.entries(
        since_ms=_time_ms(params.get("since"), "since"),
        until_ms=_time_ms(params.get("until"), "until"),
        after=after,
    )
    async for entry in entries:
        if all(entry.get(name) == value for name, value in wanted.items()):
            found.append(entry)
            if len(found) == limit:
                break
    last = found[-1]["id"] if found else None
    return JSONResponse({"object": "list", "data": found, "last_id": last})


def _time_ms(raw: str | None, name: str) -> int | None:
    if raw is None:
        return None
    try:
        return int(float(raw) * 1000)
    except ValueError as error:
        raise InvalidRequest(f"{name}: must be a unix time in seconds") from error


async def export(settings: Settings, since: float | None, until: float | None) -> int:
    """Write the audit stream as JSON lines to stdout; returns how many entries."""
    redis = connect(settings, "gateway-audit")
    audit = AuditLog(redis, Keys(settings.key_prefix), settings.audit_maxlen)
    written = 0
    try:
        entries = audit.entries(
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
    """`gateway-audit export [--since T] [--until T] > audit.jsonl`."""
    parser = argparse.ArgumentParser(description="Approval gateway audit log")
    commands = parser.add_subparsers(dest="command", required=True)
    exporter = commands.add_parser("export", help="write the audit log as JSON lines")
    exporter.add_argument("--since", type=float, help="unix seconds (inclusive)")
    exporter.add_argument("--until", type=float, help="unix seconds (inclusive)")
    args = parser.parse_args()
    count = asyncio.run(export(Settings(), args.since, args.until))
    print(f"exported {count} audit entries", file=sys.stderr)


if __name__ == "__main__":
    main()
