"""P3 approve -> resume: from sending a decision to replica B until the first resumed event
arrives on the stream that replica A holds; 3 replicas, decisions at a sustained rate.

For each rate in `--rates`, `rate x --seconds` streams are opened and held (round-robin over
the three replicas, each asking for a tool that needs approval). Then a decision for each
is sent at `rate` per second, open loop, to the *next* replica (never the holder), and the
time until the holder's stream shows its first event after the approval notice (the
`executing` tool event, sent once the run has claimed the decided calls) is recorded.
Redis `PING` round trips from the same client during the same seconds are the floor.

    python -m bench.resume [--rates 50,100,200,400] [--seconds 5]
"""

from __future__ import annotations

import argparse
import asyncio
import time
from dataclasses import dataclass
from typing import Any

import aiohttp
import orjson
from redis.asyncio import Redis

from bench.common import (
    SSEStream,
    Topology,
    at_rate,
    chat_body,
    command_line,
    main_guard,
    percentile,
    save,
    table,
)

PROMPT = "Please use getStringLength on 'resume {index}'"


@dataclass(slots=True)
class Held:
    """One held stream: where it is held and when it resumed."""

    holder: int
    session_id: str = ""
    decided_at: float = 0.0
    resumed_at: float = 0.0
    done: bool = False


async def hold(url: str, index: int, held: Held, notice: asyncio.Event) -> None:
    """Open a stream, note its approval notice, then read on to the first event after it."""
    body = chat_body(PROMPT.format(index=index))
    stream = await SSEStream.open(url, "/v1/chat/completions", body)
    async for event in stream.events():
        if event.data is None:
            continue
        if not held.session_id:
            if b'"approval"' in event.data:
                held.session_id = orjson.loads(event.data)["approval"]["id"]
                notice.set()
            continue
        if not held.resumed_at:
            held.resumed_at = event.at
        if event.data == b"[DONE]":
            held.done = True
            break
    stream.close()
    notice.set()


async def ping_floor(redis: Redis, stop: asyncio.Event, samples: list[float]) -> None:
    while not stop.is_set():
        started = time.perf_counter()
        await redis.ping()
        samples.append((time.perf_counter() - started) * 1000)
        await asyncio.sleep(0.005)


async def one_rate(
    replicas: list[str], redis: Redis, session: aiohttp.ClientSession, rate: int, seconds: float
) -> dict[str, Any]:
    count = int(rate * seconds)
    helds = [Held(holder=i % len(replicas)) for i in range(count)]
    notices = [asyncio.Event() for _ in helds]
    readers = []
    opened = time.perf_counter()
    for start in range(0, count, 100):  # open in waves, so opening is not the thing measured
        for i in range(start, min(count, start + 100)):
            reader = hold(replicas[helds[i].holder], i, helds[i], notices[i])
            readers.append(asyncio.create_task(reader))
        await asyncio.gather(*(n.wait() for n in notices[start : start + 100]))
    open_s = time.perf_counter() - opened
    missing = [h for h in helds if not h.session_id]
    if missing:
        raise RuntimeError(f"{len(missing)} streams ended without an approval notice")

    pings: list[float] = []
    stop = asyncio.Event()
    pinger = asyncio.create_task(ping_floor(redis, stop, pings))
    statuses: list[int] = []

    async def decide(held: Held) -> None:
        target = replicas[(held.holder + 1) % len(replicas)]
        held.decided_at = time.perf_counter()
        url = f"{target}/v1/approvals/{held.session_id}/decision"
        async with session.post(url, data=b'{"decision":"approve"}') as response:
            await response.read()
            statuses.append(response.status)

    sent_s = await at_rate(rate, (decide(held) for held in helds))
    await asyncio.wait_for(asyncio.gather(*readers), timeout=120)
    stop.set()
    await pinger
    latencies = [(h.resumed_at - h.decided_at) * 1000 for h in helds if h.resumed_at]
    return {
        "rate": rate,
        "decisions": count,
        "achieved_rate": count / sent_s,
        "accepted": statuses.count(200),
        "resumed": len(latencies),
        "completed": sum(h.done for h in helds),
        "open_s": open_s,
        "p50_ms": percentile(latencies, 50),
        "p90_ms": percentile(latencies, 90),
        "p99_ms": percentile(latencies, 99),
        "max_ms": max(latencies, default=float("nan")),
        "ping_p50_ms": percentile(pings, 50),
        "ping_p99_ms": percentile(pings, 99),
    }


COLUMNS = "rate achieved_rate decisions resumed p50_ms p90_ms p99_ms max_ms ping_p50_ms ping_p99_ms"


async def main(args: argparse.Namespace) -> None:
    rates = [int(r) for r in args.rates.split(",")]
    with Topology() as topology:
        server = topology.start_redis()
        topology.start_model()
        replicas = topology.start_holding_replicas(3)
        for _ in range(2):
            topology.start_worker(concurrency=32, block_ms=500)
        redis = Redis.from_url(server.url)
        async with aiohttp.ClientSession(
            connector=aiohttp.TCPConnector(limit=0),
            headers={"Content-Type": "application/json"},
        ) as session:
            await one_rate(replicas, redis, session, 20, 1)  # warm up
            rows = [await one_rate(replicas, redis, session, r, args.seconds) for r in rates]
        await redis.aclose()
    table(
        "P3 approve -> resume in ms, decision on replica B, stream held on replica A"
        " (target at 200/s: p50 <= 2, p99 <= 10)",
        ["rate/s", "sent/s", "decisions", "resumed", "p50", "p90", "p99", "max", "PING p50", "p99"],
        [[r[k] for k in COLUMNS.split()] for r in rows],
    )
    at_200 = [r for r in rows if r["rate"] == 200]
    save(
        "p3_resume",
        {
            "command": command_line("bench.resume", args),
            "rows": rows,
            "targets": {"rate": 200, "p50_ms": 2, "p99_ms": 10},
            "met": bool(at_200) and at_200[0]["p50_ms"] <= 2 and at_200[0]["p99_ms"] <= 10,
        },
    )


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--rates", default="50,100,200,400")
    parser.add_argument("--seconds", type=float, default=5)
    main_guard(main(parser.parse_args()))
