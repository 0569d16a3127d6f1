"""P2 added latency: time to first token and to last token, straight to the model vs through
the gateway, 100 concurrent streams.

Two scenarios, each run against the offline model directly and through one gateway
replica (alternating, so both see the same machine state), a fresh connection per request:

- *steady*: `--concurrency` clients each send a request as soon as their last one ended,
  for `--seconds`; the model paces its tokens `--token-delay` apart, as a real model
  does, so 100 streams are in flight at any time;
- *burst*: rounds of `--concurrency` requests sent at the same instant to a model that
  writes each answer at once: the worst case, where requests queue behind each other on
  the replica's single core;
- *one at a time*: 300 of the burst requests in sequence, so nothing queues: what the
  gateway itself adds to a request.
 Time to first token is until the first chunk that
carries answer text (the gateway's own first chunk, the role, is sent before the model
answers and does not count); time to last token is until `[DONE]`. Added latency is the
gateway's percentile minus the direct one.

    python -m bench.latency [--concurrency 100] [--seconds 20] [--rounds 10] [--words 20]
"""

from __future__ import annotations

import argparse
import asyncio
import time
from typing import Any

import orjson

from bench.common import (
    SSEStream,
    Topology,
    chat_body,
    command_line,
    main_guard,
    percentile,
    save,
    table,
)

KEYS = ("ttft_p50_ms", "ttft_p99_ms", "ttlt_p50_ms", "ttlt_p99_ms")


async def one_stream(url: str, path: str, prompt: str) -> tuple[float, float]:
    """(time to first token, time to last token) in seconds."""
    started = time.perf_counter()
    stream = await SSEStream.open(url, path, chat_body(prompt, usage=True))
    first = 0.0
    async for event in stream.events():
        if event.data is None:
            continue
        if event.data == b"[DONE]":
            stream.close()
            return first - started, event.at - started
        if not first and b'"content":"' in event.data:
            choices = orjson.loads(event.data).get("choices") or [{}]
            if choices[0].get("delta", {}).get("content"):
                first = event.at
    raise RuntimeError(f"{url}{path}: the stream ended without [DONE]")


async def steady(
    url: str, path: str, concurrency: int, seconds: float
) -> list[tuple[float, float]]:
    until = time.perf_counter() + seconds
    times: list[tuple[float, float]] = []

    async def client(index: int) -> None:
        while time.perf_counter() < until:
            times.append(await one_stream(url, path, f"steady client {index} {len(times)}"))

    await asyncio.gather(*(client(i) for i in range(concurrency)))
    return times


async def round_of(url: str, path: str, concurrency: int, index: int) -> list[tuple[float, float]]:
    return await asyncio.gather(
        *(one_stream(url, path, f"latency round {index} stream {i}") for i in range(concurrency))
    )


def summary(name: str, times: list[tuple[float, float]]) -> dict[str, Any]:
    ttft = [t[0] * 1000 for t in times]
    ttlt = [t[1] * 1000 for t in times]
    return {
        "target": name,
        "requests": len(times),
        "ttft_p50_ms": percentile(ttft, 50),
        "ttft_p99_ms": percentile(ttft, 99),
        "ttlt_p50_ms": percentile(ttlt, 50),
        "ttlt_p99_ms": percentile(ttlt, 99),
    }


async def scenario(
    topology: Topology, name: str, args: argparse.Namespace, delay_s: float
) -> list[dict[str, Any]]:
    model = topology.start_model(reply_words=args.words, token_delay_s=delay_s)
    gateway, _ = topology.start_gateway(upstream_base_url=model)
    path = "/v1/chat/completions"
    targets = {"direct": model.removesuffix("/v1"), "gateway": gateway}
    times: dict[str, list[tuple[float, float]]] = {target: [] for target in targets}
    for url in targets.values():  # warm up: pools, caches
        await round_of(url, path, 10, -1)
    for index in range(2 if delay_s else args.rounds):  # steady: two turns each, interleaved
        for target, url in targets.items():
            if delay_s:
                times[target] += await steady(url, path, args.concurrency, args.seconds / 4)
            else:
                times[target] += await round_of(url, path, args.concurrency, index)
    rows = [summary(target, found) for target, found in times.items()]
    added = {key: rows[1][key] - rows[0][key] for key in KEYS}
    rows.append({"target": "added", "requests": "", **added})
    for row in rows:
        row["scenario"] = name
    return rows


async def main(args: argparse.Namespace) -> None:
    with Topology() as topology:
        topology.start_redis()
        rows = await scenario(topology, "steady", args, args.token_delay)
        rows += await scenario(topology, "burst", args, 0.0)
        # The same requests one at a time: what the gateway adds when nothing queues.
        alone = argparse.Namespace(**{**vars(args), "concurrency": 1, "rounds": 300})
        rows += await scenario(topology, "one at a time", alone, 0.0)
    table(
        f"P2 latency in ms, {args.concurrency} concurrent streams"
        " (target: added p50 <= 1 ms, p99 <= 5 ms)",
        ["scenario", "target", "requests", "TTFT p50", "TTFT p99", "TTLT p50", "TTLT p99"],
        [[r["scenario"], r["target"], r["requests"], *(r[k] for k in KEYS)] for r in rows],
    )
    added = {r["scenario"]: {k: r[k] for k in KEYS} for r in rows if r["target"] == "added"}
    save(
        "p2_latency",
        {
            "command": command_line("bench.latency", args),
            "rows": rows,
            "added": added,
            "targets": {"added_p50_ms": 1, "added_p99_ms": 5},
            "met": {
                name: all(v <= (1 if "p50" in k else 5) for k, v in values.items())
                for name, values in added.items()
            },
        },
    )


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--rounds", type=int, default=10)
    parser.add_argument("--concurrency", type=int, default=100)
    parser.add_argument("--words", type=int, default=20)
    parser.add_argument("--token-delay", type=float, default=0.02, help="steady: s per token")
    parser.add_argument("--seconds", type=float, default=20, help="steady: both targets, in all")
    main_guard(main(parser.parse_args()))
