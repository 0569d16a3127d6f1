"""P4 held streams: what a stream paused on approval costs one replica, and waking them all.

One client process (raw asyncio on uvloop, `bench.common.SSEStream`) opens `--streams`
streams in batches of `--batch` concurrent opens, waits for each one's first event, and
samples the server's RSS before any stream and every `--sample-every` streams. In turn:

- baseline: `POST /held` of bench/baselines.py, a bare Starlette SSE stream (one event,
  then a heartbeat comment every `--heartbeat` s), served by uvicorn as a replica is;
- gateway: `POST /v1/chat/completions` on replica A, where the offline model asks for
  getStringLength, policy says ask, and the stream holds with its approval notice.

The two never hold streams at the same time. Every reader timestamps each heartbeat
comment: a heartbeat's lateness is its gap from the previous one (or from the first
event) minus the interval. Once all are open, a target's streams are held for `--hold`
seconds; the heartbeats that arrive in that window are the ones the target is on (a
stream whose last heartbeat is more than interval + 1 s before the window's end counts one
late, missing, heartbeat), and those that arrived while streams were still opening are
reported apart. The client's own event-loop lag is reported too: lateness above it is the
server's. Replica A's pub/sub connections are counted with `CLIENT LIST TYPE pubsub`
(connections are named after their replica). Finally every session is approved on replica
B (`--decision-concurrency` keep-alive connections) and the time from the first decision
sent until every held stream on A has received `[DONE]` is measured: B's decisions wake
A's streams through Redis pub/sub, workers run the tools, and A asks the model again. A
stream that ends with an error event, or is told to re-attach elsewhere (its replica gave
the run up), did not resume.

    python -m bench.held [--streams 10000] [--batch 200] [--heartbeat 5] [--hold 12]
"""

from __future__ import annotations

import argparse
import asyncio
import shutil
import time
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import orjson
import redis

from bench.common import (
    SSEStream,
    Topology,
    chat_body,
    command_line,
    cpu_seconds,
    main_guard,
    percentile,
    rss_bytes,
    save,
    table,
)

PROMPT = "Please use getStringLength on 'ab'"
LATE_S = 1.0
"""A heartbeat more than this after its schedule is late (the target)."""
RSS_RATIO = 1.5
"""Target: a held gateway stream costs at most this many times a bare Starlette stream."""
MIB = 1 << 20


# ---------------------------------------------------------------------------------------
# One held stream, read by one task: timestamps only, so 10,000 of them stay cheap.


@dataclass(slots=True)
class Held:
    """What the client saw on one held stream (times from `time.perf_counter`)."""

    marker: bytes
    """What the first event to wait for holds: `"held"` (baseline) or `"approval"`."""
    stream: SSEStream | None = None
    first_at: float = 0.0
    """When the first event arrived: the baseline's event, or the gateway's approval notice."""
    session: str = ""
    beats: list[float] = field(default_factory=list)
    resumed: bool = False
    """A `tool_event` arrived after the notice (the decision woke the stream)."""
    done_at: float = 0.0
    """When `data: [DONE]` arrived."""
    error: str = ""
    error_at: float = 0.0

    def on_data(self, data: bytes, at: float) -> None:
        """One `data:` event; no more work than a few `in` tests unless it is rare."""
        if not self.first_at:
            if self.marker in data:
                self.first_at = at
                if self.marker == b'"approval"':
                    self._read_notice(data, at)
        elif data == b"[DONE]":
            self.done_at = at
        elif b'"tool_event"' in data:
            self.resumed = True
        elif b'"reattach"' in data:  # the replica gave the run up: continue elsewhere
            self.fail("told to re-attach", at)
        if data.startswith(b'{"error"'):
            self.fail(orjson.loads(data)["error"]["message"], at)

    def _read_notice(self, data: bytes, at: float) -> None:
        approval = orjson.loads(data)["approval"]
        self.session = approval["id"]
        if approval["status"] != "pending":
            self.fail(f"approval is {approval['status']}", at)

    def fail(self, error: str, at: float) -> None:
        if not self.error:
            self.error, self.error_at = error, at


async def read_stream(
    url: str, path: str, body: dict[str, Any], held: Held, ready: asyncio.Event
) -> None:
    """Open one stream and read it to its end; `ready` is set at its first awaited event."""
    try:
        stream = held.stream = await SSEStream.open(url, path, body)
        if stream.status != 200:
            held.fail(f"status {stream.status}", time.perf_counter())
            return
        async for event in stream.events():
            if event.data is None:
                held.beats.append(event.at)
            else:
                held.on_data(event.data, event.at)
                if held.first_at:
                    ready.set()
        if not held.done_at:
            held.fail("ended without [DONE]", time.perf_counter())
    except (OSError, asyncio.IncompleteReadError, asyncio.LimitOverrunError, ValueError) as error:
        held.fail(f"{type(error).__name__}: {error}", time.perf_counter())
    finally:
        ready.set()


@dataclass
class Opened:
    """A target's streams, the readers' tasks, and its RSS samples as they opened."""

    helds: list[Held]
    tasks: list[asyncio.Task[None]]
    samples: list[tuple[int, int]]
    """(streams held, RSS bytes) before any stream and every `--sample-every`."""
    open_s: float

    @property
    def failed(self) -> list[Held]:
        """Streams that never showed their first event, or ended with an error since."""
        return [h for h in self.helds if h.error or not h.first_at]

    def errors(self, since: float, until: float) -> dict[str, int]:
        """How many streams failed in [since, until), by error."""
        return _errors(h for h in self.helds if h.error and since <= h.error_at < until)


async def open_streams(
    url: str, path: str, body: dict[str, Any], marker: bytes, pid: int, args: argparse.Namespace
) -> Opened:
    """Open `--streams` streams, `--batch` at a time, sampling the server's RSS as they go."""
    opened = Opened([], [], [(0, rss_bytes(pid))], 0.0)
    started = time.perf_counter()
    while len(opened.helds) < args.streams:
        count = min(args.batch, args.streams - len(opened.helds))
        readies = []
        for _ in range(count):
            held, ready = Held(marker), asyncio.Event()
            opened.helds.append(held)
            readies.append(ready)
            task = asyncio.create_task(read_stream(url, path, body, held, ready))
            opened.tasks.append(task)
        await asyncio.gather(*(ready.wait() for ready in readies))
        total = len(opened.helds)
        if total % args.sample_every == 0 or total == args.streams:
            opened.samples.append((total - len(opened.failed), rss_bytes(pid)))
    opened.open_s = time.perf_counter() - started
    print(f"  opened {args.streams} streams in {opened.open_s:.1f} s", flush=True)
    return opened


def close_streams(opened: Opened) -> None:
    for task in opened.tasks:
        task.cancel()
    for held in opened.helds:
        if held.stream is not None:
            held.stream.close()


def _errors(helds: Iterable[Held]) -> dict[str, int]:
    """How many streams ended with each error (`redis is unavailable: ...`, a status...)."""
    counts: dict[str, int] = {}
    for held in helds:
        reason = held.error or "no first event"
        counts[reason] = counts.get(reason, 0) + 1
    return counts


class LoopLag:
    """The client's own event-loop lag: how late a 50 ms sleep wakes, at worst."""

    def __init__(self) -> None:
        self.worst = 0.0
        self._task = asyncio.create_task(self._watch())

    async def _watch(self) -> None:
        while True:
            before = time.perf_counter()
            await asyncio.sleep(0.05)
            self.worst = max(self.worst, time.perf_counter() - before - 0.05)

    def reset(self) -> float:
        """The worst lag so far; start again from none."""
        worst, self.worst = self.worst, 0.0
        return worst

    def stop(self) -> float:
        self._task.cancel()
        return self.worst


def lateness(
    helds: list[Held], interval: float, since: float, until: float
) -> tuple[list[float], int]:
    """The lateness (s) of every heartbeat that arrived in [since, until], and how many
    streams had missed one by `until` (each such miss is also one late heartbeat).

    A stream that failed is followed up to its failure (which is counted elsewhere).
    """
    late: list[float] = []
    missing = 0
    for held in helds:
        if not held.first_at:
            continue
        end = min(until, held.error_at) if held.error_at else until
        last = held.first_at
        for beat in held.beats:
            if beat > end:
                break
            if beat >= since:
                late.append(beat - last - interval)
            last = beat
        if end == until and until - last > interval + LATE_S:
            late.append(until - last - interval)
            missing += 1
    return late, missing


async def hold(opened: Opened, pid: int, args: argparse.Namespace, lag: LoopLag) -> dict[str, Any]:
    """Hold every stream for `--hold` s; the heartbeats' lateness and the server's cost.

    The target is on the heartbeats that arrive in the window, once every stream is open;
    those that arrived while streams were still opening are reported apart.
    """
    lag_opening = lag.reset()
    cpu_before, started = cpu_seconds(pid), time.perf_counter()
    await asyncio.sleep(args.hold)
    until = time.perf_counter()
    cpu = cpu_seconds(pid) - cpu_before
    late, missing = lateness(opened.helds, args.heartbeat, started, until)
    opening, _ = lateness(opened.helds, args.heartbeat, 0.0, started)
    rss_0, rss_n = opened.samples[0][1], opened.samples[-1][1]
    held = opened.samples[-1][0]
    return {
        "streams": held,
        "open_errors": opened.errors(0, started),
        "hold_errors": opened.errors(started, until),
        "open_s": opened.open_s,
        "rss_samples": opened.samples,
        "rss_0_bytes": rss_0,
        "rss_n_bytes": rss_n,
        "rss_after_hold_bytes": rss_bytes(pid),
        "bytes_per_stream": (rss_n - rss_0) / max(held, 1),
        "hold_s": until - started,
        "hold_cpu_fraction": cpu / (until - started),
        "heartbeats": len(late) - missing,
        "heartbeat_p99_late_s": percentile(late, 99),
        "heartbeat_max_late_s": max(late, default=float("nan")),
        "heartbeats_late": sum(1 for value in late if value > LATE_S),
        "heartbeats_missing": missing,
        "client_loop_lag_max_s": lag.stop(),
        "opening": {
            "heartbeats": len(opening),
            "heartbeat_p99_late_s": percentile(opening, 99),
            "heartbeat_max_late_s": max(opening, default=float("nan")),
            "heartbeats_late": sum(1 for value in opening if value > LATE_S),
            "client_loop_lag_max_s": lag_opening,
        },
    }


# ---------------------------------------------------------------------------------------
# Decisions: keep-alive HTTP/1.1 connections, one request at a time each.


class KeepAlive:
    """One keep-alive HTTP/1.1 connection for small JSON POSTs."""

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self._reader = reader
        self._writer = writer

    @classmethod
    async def open(cls, url: str) -> KeepAlive:
        target = httpx.URL(url)
        reader, writer = await asyncio.open_connection(target.host, target.port)
        return cls(reader, writer)

    async def post(self, path: str, payload: bytes) -> int:
        """POST and read the whole response; its status."""
        self._writer.write(
            f"POST {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\n"
            f"Content-Length: {len(payload)}\r\n\r\n".encode()
            + payload
        )
        head = await self._reader.readuntil(b"\r\n\r\n")
        lines = head.split(b"\r\n")
        length = 0
        for line in lines[1:]:
            name, _, value = line.partition(b":")
            if name.strip().lower() == b"content-length":
                length = int(value)
        await self._reader.readexactly(length)
        return int(lines[0].split()[1])

    def close(self) -> None:
        self._writer.close()


@dataclass
class Decided:
    statuses: dict[int, int] = field(default_factory=dict)
    sent_at: dict[str, float] = field(default_factory=dict)
    first_sent: float = 0.0
    last_answered: float = 0.0


async def decide_all(url: str, sessions: list[str], concurrency: int) -> Decided:
    """Approve every session on `url`, `concurrency` requests at a time."""
    decided = Decided()
    pending = iter(sessions)
    payload = orjson.dumps({"decision": "approve"})
    connections = await asyncio.gather(*(KeepAlive.open(url) for _ in range(concurrency)))
    decided.first_sent = time.perf_counter()

    async def one_connection(connection: KeepAlive) -> None:
        for session in pending:
            decided.sent_at[session] = time.perf_counter()
            try:
                status = await connection.post(f"/v1/approvals/{session}/decision", payload)
            except (OSError, asyncio.IncompleteReadError):
                status = 0  # the connection broke: count it, and go on with a new one
                connection.close()
                connection = await KeepAlive.open(url)
            decided.statuses[status] = decided.statuses.get(status, 0) + 1
        connection.close()

    await asyncio.gather(*(one_connection(c) for c in connections))
    decided.last_answered = time.perf_counter()
    return decided


async def resume_all(
    opened: Opened, decide_url: str, args: argparse.Namespace, pid: int
) -> dict[str, Any]:
    """Approve every held session on `decide_url`; how long until every stream got [DONE]."""
    sessions = [h.session for h in opened.helds if h.session and not h.error]
    cpu_before = cpu_seconds(pid)
    decided = await decide_all(decide_url, sessions, args.decision_concurrency)
    _, pending = await asyncio.wait(opened.tasks, timeout=args.resume_timeout)
    for task in pending:
        task.cancel()
    helds = [h for h in opened.helds if h.session]
    done = [h for h in helds if h.done_at and not h.error]
    waits = [h.done_at - decided.sent_at[h.session] for h in done if h.session in decided.sent_at]
    last_done = max((h.done_at for h in done), default=decided.first_sent) - decided.first_sent
    decisions_s = decided.last_answered - decided.first_sent
    return {
        "decisions": len(sessions),
        "decision_statuses": decided.statuses,
        "decisions_s": decisions_s,
        "decisions_per_s": len(sessions) / decisions_s if decisions_s else float("nan"),
        "resumed": sum(1 for h in helds if h.resumed and not h.error),
        "done": len(done),
        "unfinished": len(pending),
        "last_done_s": last_done,
        "resume_all_s": last_done if len(done) == args.streams else None,
        "decision_to_done_p50_s": percentile(waits, 50),
        "decision_to_done_p99_s": percentile(waits, 99),
        "resume_cpu_s": cpu_seconds(pid) - cpu_before,
        "rss_after_resume_bytes": rss_bytes(pid),
        "errors": opened.errors(decided.first_sent, float("inf")),
    }


# ---------------------------------------------------------------------------------------
# The two targets.


async def baseline(topology: Topology, args: argparse.Namespace) -> dict[str, Any]:
    url, process = topology.start_app(
        "baseline", "bench.baselines", "--heartbeat", str(args.heartbeat)
    )
    body: dict[str, Any] = {}
    warm = await open_streams(url, "/held", body, b'"held"', process.pid, _few(args))
    close_streams(warm)
    print(f"- baseline: {args.streams} bare Starlette SSE streams", flush=True)
    lag = LoopLag()
    opened = await open_streams(url, "/held", body, b'"held"', process.pid, args)
    result = await hold(opened, process.pid, args, lag)
    close_streams(opened)
    await asyncio.sleep(0.5)
    process.stop()
    return {"target": "baseline (bare Starlette SSE)", **result}


def gateway_topology(topology: Topology, args: argparse.Namespace) -> tuple[str, int, str, int]:
    """Redis, the offline model, two workers, replica A (holds) and B (decides)."""
    topology.start_redis()
    topology.start_model()
    settings: dict[str, Any] = {
        "tool_policy": '{"getStringLength":"ask"}',
        "heartbeat_interval_s": args.heartbeat,
        "approval_timeout_s": 3600,
        "max_held_streams": 2 * args.streams,
        "max_pending_sessions": 2 * args.streams,
    }
    for setting in args.setting:  # experiments: --setting reread_interval_s=5
        name, _, value = setting.partition("=")
        settings[name] = value
    holder_url, holder = topology.start_gateway(**settings)
    decider_url, decider = topology.start_gateway(**settings)
    for _ in range(args.workers):
        topology.start_worker(concurrency=args.worker_concurrency)
    return holder_url, holder.pid, decider_url, decider.pid


def pubsub_connections(redis_url: str, pid: int) -> dict[str, int]:
    """Replica `pid`'s Redis connections (named `gateway:<host>:<pid>:<id>`)."""
    client = redis.Redis.from_url(redis_url, decode_responses=True)
    try:
        mine = [c for c in client.client_list() if f":{pid}:" in c.get("name", "")]
        pubsub = [c for c in client.client_list(_type="pubsub") if f":{pid}:" in c.get("name", "")]
    finally:
        client.close()
    return {"pubsub_connections": len(pubsub), "redis_connections": len(mine)}


async def gateway(topology: Topology, args: argparse.Namespace) -> dict[str, Any]:
    url, pid, decide_url, decider_pid = gateway_topology(topology, args)
    assert topology.redis is not None
    path, body = "/v1/chat/completions", chat_body(PROMPT)
    warm = await open_streams(url, path, body, b'"approval"', pid, _few(args))
    await resume_all(warm, decide_url, _few(args), pid)
    print(f"- gateway: {args.streams} streams held on approval on replica A", flush=True)
    lag = LoopLag()
    opened = await open_streams(url, path, body, b'"approval"', pid, args)
    redis_cpu = cpu_seconds(topology.redis.process.pid)
    result = await hold(opened, pid, args, lag)
    redis_cpu = cpu_seconds(topology.redis.process.pid) - redis_cpu
    connections = pubsub_connections(topology.redis.url, pid)
    print(f"- decisions for all {args.streams} on replica B", flush=True)
    resumed = await resume_all(opened, decide_url, args, pid)
    print(
        f"  {resumed['done']} of {args.streams} streams resumed and ended with [DONE], the last"
        f" {resumed['last_done_s']:.1f} s after the first decision",
        flush=True,
    )
    decider = pubsub_connections(topology.redis.url, decider_pid)
    return {
        "target": "gateway (held on approval)",
        **result,
        "redis_hold_cpu_fraction": redis_cpu / result["hold_s"],
        **connections,
        "decider_pubsub_connections": decider["pubsub_connections"],
        "resume": resumed,
    }


def _few(args: argparse.Namespace) -> argparse.Namespace:
    """The same options for a warm-up of a few streams (its RSS is not reported)."""
    return argparse.Namespace(**{**vars(args), "streams": 4, "batch": 4, "sample_every": 4})


# ---------------------------------------------------------------------------------------


COLUMNS = (
    ("target", "target", 1),
    ("streams", "streams", 1),
    ("open s", "open_s", 1),
    ("RSS 0 MiB", "rss_0_bytes", MIB),
    ("RSS N MiB", "rss_n_bytes", MIB),
    ("KiB/stream", "bytes_per_stream", 1024),
    ("x baseline", "x_baseline", 1),
    ("hold CPU %", "hold_cpu_percent", 1),
    ("beats", "heartbeats", 1),
    ("late p99 s", "heartbeat_p99_late_s", 1),
    ("late max s", "heartbeat_max_late_s", 1),
    ("late>1s", "heartbeats_late", 1),
    ("client lag s", "client_loop_lag_max_s", 1),
)
"""The main table's columns: header, row key, divisor."""


def report(base: dict[str, Any], held: dict[str, Any], args: argparse.Namespace) -> dict[str, bool]:
    """Print both tables; which targets were met."""
    for row in (base, held):
        row["x_baseline"] = row["bytes_per_stream"] / base["bytes_per_stream"]
        row["hold_cpu_percent"] = 100 * row["hold_cpu_fraction"]
    table(
        f"P4 held streams: {args.streams} on one replica process, "
        f"a heartbeat every {args.heartbeat:g} s, held {args.hold:g} s",
        [header for header, _, _ in COLUMNS],
        [
            [row[key] / unit if unit != 1 else row[key] for _, key, unit in COLUMNS]
            for row in (base, held)
        ],
    )
    resume = held["resume"]
    met = {
        "rss_ratio": held["x_baseline"] <= RSS_RATIO,
        "heartbeats": held["heartbeats_late"] == 0 and held["heartbeat_max_late_s"] <= LATE_S,
        "pubsub": held["pubsub_connections"] == 1,
        "all_resumed": resume["resumed"] == resume["done"] == args.streams,
    }
    every = resume["resume_all_s"]
    table(
        "P4 targets (gateway: replica A holds, replica B takes the decisions)",
        ["measure", "value", "target", "met"],
        [
            [
                "x baseline (RSS per stream)",
                held["x_baseline"],
                f"<= {RSS_RATIO}",
                _yes(met["rss_ratio"]),
            ],
            ["heartbeats late (> 1 s)", held["heartbeats_late"], "0", _yes(met["heartbeats"])],
            ["  while opening: late, max s", _opening(held["opening"]), "-", "-"],
            ["pub/sub connections (A)", held["pubsub_connections"], "1", _yes(met["pubsub"])],
            [
                "streams resumed, ended [DONE]",
                f"{resume['resumed']}, {resume['done']}",
                "all",
                _yes(met["all_resumed"]),
            ],
            ["failed: at open, held, resuming", _failures(held), "0", "-"],
            ["Redis connections (A)", held["redis_connections"], "-", "-"],
            ["Redis CPU % while holding", 100 * held["redis_hold_cpu_fraction"], "-", "-"],
            ["decisions on B, s", resume["decisions_s"], "-", "-"],
            ["decisions/s", resume["decisions_per_s"], "-", "-"],
            ["resume-all s (1st decision->last [DONE])", _every(every, resume), "-", "-"],
            ["decision -> [DONE] p50 s", resume["decision_to_done_p50_s"], "-", "-"],
            ["decision -> [DONE] p99 s", resume["decision_to_done_p99_s"], "-", "-"],
        ],
    )
    return met


def _every(every: float | None, resume: dict[str, Any]) -> str | float:
    if every is not None:
        return every
    return f"not all ({resume['done']} in {resume['last_done_s']:.1f})"


def _opening(opening: dict[str, Any]) -> str:
    return f"{opening['heartbeats_late']}, {opening['heartbeat_max_late_s']:.3f}"


def _failures(held: dict[str, Any]) -> str:
    errors = (held["open_errors"], held["hold_errors"], held["resume"]["errors"])
    return ", ".join(str(sum(counts.values())) for counts in errors)


def command(args: argparse.Namespace) -> str:
    """The command line of this run (each --setting spelled out)."""
    options = {k: v for k, v in vars(args).items() if k not in ("setting", "keep_logs")}
    line = command_line("bench.held", argparse.Namespace(**options))
    return " ".join([line, *(f"--setting {setting}" for setting in args.setting)])


def keep_logs(topology: Topology, folder: Path) -> None:
    """Copy the processes' logs out of the topology's folder before it is removed."""
    folder.mkdir(parents=True, exist_ok=True)
    for log in topology.workdir.glob("*.log"):
        shutil.copy(log, folder / log.name)
    print(f"logs copied to {folder}", flush=True)


def _yes(value: bool) -> str:
    return "yes" if value else "NO"


async def main(args: argparse.Namespace) -> None:
    started = time.perf_counter()
    with Topology() as topology:
        base = await baseline(topology, args)
        try:
            held = await gateway(topology, args)
        finally:
            if args.keep_logs:
                keep_logs(topology, Path(args.keep_logs))
    met = report(base, held, args)
    elapsed = time.perf_counter() - started
    print(f"P4 took {elapsed:.0f} s", flush=True)
    save(
        "p4_held",
        {
            "command": command(args),
            "rows": [base, held],
            "rss_samples": {
                "baseline": base["rss_samples"],
                "gateway": held["rss_samples"],
            },
            "targets": {
                "x_baseline": RSS_RATIO,
                "heartbeat_late_s": LATE_S,
                "pubsub_connections": 1,
                "all_resumed": True,
            },
            "met_each": met,
            "met": all(met.values()),
            "elapsed_s": elapsed,
        },
    )


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--streams", type=int, default=10_000)
    parser.add_argument("--batch", type=int, default=200, help="concurrent opens")
    parser.add_argument("--sample-every", type=int, default=1000, help="streams between RSS")
    parser.add_argument("--heartbeat", type=float, default=5.0, help="s between heartbeats")
    parser.add_argument("--hold", type=float, default=12.0, help="s all streams are held")
    parser.add_argument("--decision-concurrency", type=int, default=64)
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--worker-concurrency", type=int, default=32)
    parser.add_argument("--resume-timeout", type=float, default=300.0)
    parser.add_argument("--keep-logs", default="", help="copy the processes' logs here")
    parser.add_argument(
        "--setting",
        action="append",
        default=[],
        metavar="NAME=VALUE",
        help="another replica setting (GATEWAY_NAME=VALUE), for experiments; repeatable",
    )
    main_guard(main(parser.parse_args()))
