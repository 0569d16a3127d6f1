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
from collections.abc import Callable, Mapping
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

_SCAN_BATCH = 1000
_FILTERS = ("session", "tool", "actor", "event")


async def list_audit(request: Request) -> JSONResponse:
    principal = principal_of(request)
    principal.require("approver")
    engine: Engine = request.app.state.engine
    params = request.query_params
    limit = _int(params.get("limit", "100"), "limit", 1, 1000)
    since = _time_ms(params.get("since"), "since")
    until = _time_ms(params.get("until"), "until")
    after = params.get("after")
    if after is not None and not re.fullmatch(r"\d+-\d+", after):
        raise InvalidRequest("after: must be an audit entry id like '1795611731579-0'")
    wanted = {name: params[name] for name in _FILTERS if params.get(name)}
    if "admin" not in principal.roles:
        wanted["tenant"] = principal.tenant
    entries, last = await _scan(engine.audit, since, until, after, wanted, limit)
    return JSONResponse({"object": "list", "data": entries, "last_id": last})


async def _scan(
    audit: AuditLog,
    since_ms: int | None,
    until_ms: int | None,
    after: str | None,
    wanted: Mapping[str, str],
    limit: int,
) -> tuple[list[dict[str, Any]], str | None]:
    """Matching entries in order, reading the stream in batches until `limit` match."""
    matches = _matcher(wanted)
    found: list[dict[str, Any]] = []
    cursor = after
    while len(found) < limit:
        batch = await audit.read(
            since_ms=None if cursor else since_ms,
            until_ms=until_ms,
            after=cursor,
            count=_SCAN_BATCH,
        )
        found.extend(entry for entry in batch if matches(entry))
        if len(batch) < _SCAN_BATCH:
            break
        cursor = batch[-1]["id"]
    found = found[:limit]
    return found, (found[-1]["id"] if found else None)


def _matcher(wanted: Mapping[str, str]) -> Callable[[dict[str, Any]], bool]:
    return lambda entry: all(entry.get(name) == value for name, value in wanted.items())


def _int(raw: str, name: str, low: int, high: int) -> int:
    if not raw.isdigit() or not low <= int(raw) <= high:
        raise InvalidRequest(f"{name}: must be an integer from {low} to {high}")
    return int(raw)


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
    cursor: str | None = None
    try:
        while True:
            batch = await audit.read(
                since_ms=None if cursor else (int(since * 1000) if since else None),
                until_ms=int(until * 1000) if until else None,
                after=cursor,
                count=_SCAN_BATCH,
            )
            for entry in batch:
                sys.stdout.buffer.write(orjson.dumps(entry, option=orjson.OPT_APPEND_NEWLINE))
            written += len(batch)
            if len(batch) < _SCAN_BATCH:
                return written
            cursor = batch[-1]["id"]
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
