"""P5 decision throughput: decisions/s that 3 replicas and one Redis sustain with p99 <= 20 ms,
and the Redis commands each decision costs (from `INFO commandstats`).

Sessions are opened through the first version's endpoint (`POST /v1/chat/completion`),
whose stream ends at the approval notice: nobody holds them, so what is measured is the
decide path alone (read, check, store atomically, wake, audit), not the run a decision
starts (P3 measures that). Decisions go round-robin straight to the three replicas at
each rate in `--rates`, open loop, for `--seconds` each. Commands per decision: Redis's
counters are reset, one batch of decisions is sent, and every command Redis ran (those a
Lua script runs included) is divided by the decisions.

    python -m bench.decisions [--rates 500,1000,1500,2000] [--seconds 3]
"""

from __future__ import annotations

import argparse
import asyncio
import time
from typing import Any

import aiohttp
import orjson
from redis.asyncio import Redis

from bench.common import (
    SSEStream,
    Topology,
    at_rate,
    command_line,
    main_guard,
    percentile,
    save,
    table,
)

DECISION = b'{"decision":"approve"}'


async def open_sessions(replicas: list[str], count: int) -> list[str]:
    """`count` pending sessions, opened through the first version's protocol."""
    ids: list[str] = []

    async def one(index: int) -> None:
        body = {"messages": [{"role": "user", "content": f"getStringLength 'p5 {index}'"}]}
        stream = await SSEStream.open(replicas[index % len(replicas)], "/v1/chat/completion", body)
        async for event in stream.events():
            if event.data and b"approvalRequired" in event.data:
                ids.append(orjson.loads(event.data)["sessionId"])
        stream.close()

    for start in range(0, count, 200):
        await asyncio.gather(*(one(i) for i in range(start, min(count, start + 200))))
    if len(ids) != count:
        raise RuntimeError(f"opened {len(ids)} sessions of {count}")
    return ids


async def decide_at(
    session: aiohttp.ClientSession, replicas: list[str], ids: list[str], rate: float
) -> dict[str, Any]:
    """Send one decision per id at `rate` per second; latencies and outcomes."""
    latencies: list[float] = []
    statuses: list[int] = []

    async def one(index: int, session_id: str) -> None:
        url = f"{replicas[index % len(replicas)]}/v1/approvals/{session_id}/decision"
        started = time.perf_counter()
        async with session.post(url, data=DECISION) as response:
            await response.read()
        latencies.append((time.perf_counter() - started) * 1000)
        statuses.append(response.status)

    started = time.perf_counter()
    sent_s = await at_rate(rate, (one(index, id_) for index, id_ in enumerate(ids)))
    done_s = time.perf_counter() - started
    return {
        "rate": rate,
        "decisions": len(ids),
        "sent_per_s": len(ids) / sent_s,
        "completed_per_s": len(ids) / done_s,
        "ok": statuses.count(200),
        "p50_ms": percentile(latencies, 50),
        "p99_ms": percentile(latencies, 99),
        "max_ms": max(latencies),
    }


async def commands_per_decision(
    redis: Redis, session: aiohttp.ClientSession, replicas: list[str], ids: list[str]
) -> dict[str, Any]:
    """Reset Redis's counters, decide `ids`, and read the commands it ran."""
    await redis.config_resetstat()
    await decide_at(session, replicas, ids, 200)
    stats: dict[str, dict[str, Any]] = await redis.info("commandstats")
    calls = {name.removeprefix("cmdstat_"): int(v["calls"]) for name, v in stats.items()}
    calls.pop("info", None)
    background = {k: v for k, v in calls.items() if k in ("ping", "zrangebyscore", "set")}
    total = sum(calls.values()) - sum(background.values())
    # Sent by the gateway: its HGETALL, the EVALSHA, the audit XADD. The script runs one
    # HGETALL of its own (to return the session), so that many are not the gateway's.
    own_hgetall = calls.get("hgetall", 0) - calls.get("evalsha", 0)
    sent = own_hgetall + calls.get("evalsha", 0) + calls.get("xadd", 0)
    return {
        "decisions": len(ids),
        "commands": calls,
        "excluded_background": background,
        "per_decision": total / len(ids),
        "sent_per_decision": sent / len(ids),
    }


async def main(args: argparse.Namespace) -> None:
    rates = [float(r) for r in args.rates.split(",")]
    with Topology() as topology:
        server = topology.start_redis()
        topology.start_model()
        replicas = topology.start_holding_replicas(3)
        redis = Redis.from_url(server.url, decode_responses=True)
        needed = 500 + sum(int(r * args.seconds) for r in rates)
        opened = time.perf_counter()
        ids = await open_sessions(replicas, needed)
        open_s = time.perf_counter() - opened
        async with aiohttp.ClientSession(
            connector=aiohttp.TCPConnector(limit=0),
            headers={"Content-Type": "application/json"},
        ) as session:
            counted = await commands_per_decision(redis, session, replicas, ids[:500])
            rows, used = [], 500
            for rate in rates:
                batch = ids[used : used + int(rate * args.seconds)]
                used += len(batch)
                rows.append(await decide_at(session, replicas, batch, rate))
        await redis.aclose()
    table(
        "P5 decisions through 3 replicas, one Redis, latency in ms (target: p99 <= 20 ms)",
        ["rate/s", "sent/s", "done/s", "decisions", "200s", "p50", "p99", "max"],
        [[r[k] for k in COLUMNS.split()] for r in rows],
    )
    sustained = [r["rate"] for r in rows if r["p99_ms"] <= 20 and r["ok"] == r["decisions"]]
    print(
        f"sustained with p99 <= 20 ms: {max(sustained, default=0):.0f} decisions/s; "
        f"Redis commands per decision: {counted['per_decision']:.2f} "
        f"({counted['sent_per_decision']:.2f} sent by the gateway, the rest run by the "
        "decision's Lua script)",
        flush=True,
    )
    print("commands:", counted["commands"], flush=True)
    save(
        "p5_decisions",
        {
            "command": command_line("bench.decisions", args),
            "sessions_opened_s": open_s,
            "rows": rows,
            "sustained_rate": max(sustained, default=0),
            "redis": counted,
            "targets": {"p99_ms": 20, "commands_per_decision": 6},
            "met": {"commands": counted["per_decision"] <= 6, "throughput_measured": True},
        },
    )


COLUMNS = "rate sent_per_s completed_per_s decisions ok p50_ms p99_ms max_ms"

if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--rates", default="500,1000,1500,2000")
    parser.add_argument("--seconds", type=float, default=3)
    main_guard(main(parser.parse_args()))
