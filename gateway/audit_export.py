"""`gateway-audit export [--since T] [--until T] [--tenant NAME] > audit.jsonl`: the audit
log as JSON lines, every tenant's merged in time order, or one tenant's."""

from __future__ import annotations

import argparse
import asyncio
import sys

import orjson

from core.audit import AuditLog
from core.connect import connect
from core.keys import Keys
from core.settings import Settings


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


if __name__ == "__main__":
    main()
