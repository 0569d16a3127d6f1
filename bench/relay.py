"""P1 relay cost: the gateway's CPU time per streamed chunk, next to a bare httpx relay.

Every target relays the same offline-model stream (`--words` chunks per answer) to the
same client, in two scenarios: *burst*, where the model writes a whole answer at once (so
one network read holds many events, and a relay may write them together), and *paced*,
where the model pauses `--paced-delay` between tokens as a real model does (one event per
read, so every relay writes once per event). The CPU time each server process spent
(utime + stime from /proc/<pid>/stat) is divided by the chunks the client received.
Targets, each its own process:

- baseline: reads the upstream with httpx and writes each event on (bench/baselines.py);
- gateway (wire): a replica with the default upstream adapter (httpx + orjson);
- gateway (langchain): a replica with `GATEWAY_UPSTREAM_ADAPTER=langchain` (fewer chunks:
  it is an order of magnitude slower).

    python -m bench.relay [--requests 100] [--words 2000] [--concurrency 4]
"""

from __future__ import annotations

import argparse
import asyncio
import time
from typing import Any

from bench.common import (
    SSEStream,
    Topology,
    chat_body,
    command_line,
    cpu_seconds,
    main_guard,
    save,
    table,
)


async def relay(url: str, path: str, requests: int, concurrency: int) -> int:
    """Stream `requests` answers through `url`; the number of `data:` events received."""
    received = 0
    queue: asyncio.Queue[int] = asyncio.Queue()
    for index in range(requests):
        queue.put_nowait(index)

    async def one_client() -> None:
        nonlocal received
        while not queue.empty():
            index = queue.get_nowait()
            stream = await SSEStream.open(url, path, chat_body(f"relay benchmark {index}"))
            assert stream.status == 200, stream.status
            async for event in stream.events():
                if event.data is not None:
                    received += 1
            stream.close()

    await asyncio.gather(*(one_client() for _ in range(concurrency)))
    return received


async def measure(
    name: str, url: str, path: str, pid: int, requests: int, concurrency: int
) -> dict[str, Any]:
    await relay(url, path, 2, 2)  # warm up: connections, caches
    cpu_before, wall_before = cpu_seconds(pid), time.perf_counter()
    chunks = await relay(url, path, requests, concurrency)
    cpu, wall = cpu_seconds(pid) - cpu_before, time.perf_counter() - wall_before
    return {
        "target": name,
        "requests": requests,
        "chunks": chunks,
        "cpu_s": cpu,
        "wall_s": wall,
        "us_per_chunk": cpu / chunks * 1e6,
        "chunks_per_s": chunks / wall,
    }


async def scenario(
    topology: Topology, name: str, args: argparse.Namespace, delay_s: float
) -> list[dict[str, Any]]:
    """Baseline and gateway on one offline model; `delay_s` paces its tokens."""
    upstream = topology.start_model(reply_words=args.words, token_delay_s=delay_s)
    baseline_url, baseline = topology.start_app(
        f"baseline-{name}", "bench.baselines", "--upstream", upstream
    )
    gateway_url, gateway = topology.start_gateway(upstream_base_url=upstream)
    path = "/v1/chat/completions"
    concurrency = args.concurrency if delay_s == 0 else args.paced_concurrency
    rows = [
        await measure(
            "baseline (httpx relay)",
            baseline_url,
            "/relay/chat/completions",
            baseline.pid,
            args.requests,
            concurrency,
        ),
        await measure(
            "gateway, wire adapter", gateway_url, path, gateway.pid, args.requests, concurrency
        ),
    ]
    if delay_s == 0:
        langchain_url, langchain = topology.start_gateway(
            upstream_base_url=upstream, upstream_adapter="langchain"
        )
        rows.append(
            await measure(
                "gateway, langchain adapter",
                langchain_url,
                path,
                langchain.pid,
                max(2, args.requests // 10),
                concurrency,
            )
        )
    for row in rows:
        row["scenario"] = name
        row["x_baseline"] = row["us_per_chunk"] / rows[0]["us_per_chunk"]
    return rows


async def main(args: argparse.Namespace) -> None:
    with Topology() as topology:
        topology.start_redis()
        rows = await scenario(topology, "burst", args, 0.0)
        rows += await scenario(topology, "paced", args, args.paced_delay)
    table(
        "P1 relay cost: server CPU per chunk (target: gateway <= 25 us, <= 2x baseline)",
        ["scenario", "target", "chunks", "cpu s", "us/chunk", "x baseline", "chunks/s"],
        [
            [r[k] for k in ("scenario", "target", "chunks", "cpu_s", "us_per_chunk")]
            + [r["x_baseline"], r["chunks_per_s"]]
            for r in rows
        ],
    )
    gateways = [r for r in rows if r["target"] == "gateway, wire adapter"]
    save(
        "p1_relay",
        {
            "command": command_line("bench.relay", args),
            "rows": rows,
            "targets": {"us_per_chunk": 25, "x_baseline": 2},
            "met": all(r["us_per_chunk"] <= 25 and r["x_baseline"] <= 2 for r in gateways),
        },
    )


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--requests", type=int, default=100)
    parser.add_argument("--words", type=int, default=2000)
    parser.add_argument("--concurrency", type=int, default=4)
    parser.add_argument("--paced-delay", type=float, default=0.001, help="s between tokens")
    parser.add_argument("--paced-concurrency", type=int, default=50)
    main_guard(main(parser.parse_args()))
