"""Held streams through the load balancer: 10,000 chats paused on approval behind nginx.

The shipped topology on loopback: a real redis-server, the offline model, 3 gateway
replicas, workers, and nginx with deploy/nginx.conf rendered for local ports (its
descriptor limits lowered to what this machine allows, see `deploy.cluster`). One client
process (raw asyncio on uvloop, reading SSE line by line: the gateway's heartbeat is a lone
comment line, which `bench.common.SSEStream` only sees with the next event) opens
`--streams` streamed chats through nginx, at most `--rate` a second and `--in-flight` at a
time; each one's tool call (getStringLength) is `ask`, so each stream holds with its
approval notice. The replicas have room for all of them (`HOLDING`, and every stream is the
one open-mode tenant's).

Once every stream shows its notice, they are held `--hold` s (longer than the 15 s
heartbeat, which must come through nginx unbuffered), and the cost is read from /proc:
established connections on nginx's and each replica's port, open descriptors and RSS of
every process (nginx's workers, each replica, ...). Then every pending approval is listed
and decided through nginx: the approvals API lists at most 1000 pending sessions a call
and has no cursor, so it is listed and decided a page at a time until it lists none; the
pages add up to the count of pending approvals it saw. Finally every stream must end with
`data: [DONE]` (a worker runs the tool, the replica asks the model again).

    python -m bench.held_nginx [--streams 10000] [--rate 400] [--in-flight 200] [--hold 20]
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import os
import random
import shutil
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import orjson
import redis

from bench.common import (
    HOLDING,
    Topology,
    chat_body,
    command_line,
    main_guard,
    port_of,
    rss_bytes,
    save,
    table,
)
from bench.held import PROMPT, decide_all
from core.keys import Keys
from core.settings import Settings
from deploy.cluster import raise_nofile_limit
from tests.processes import Process

BODY = orjson.dumps(chat_body(PROMPT))
REQUEST = (
    b"POST /v1/chat/completions HTTP/1.1\r\nHost: HOST\r\nAccept: text/event-stream\r\n"
    b"Content-Type: application/json\r\nContent-Length: %d\r\n\r\n%s" % (len(BODY), BODY)
)
HEARTBEAT = b": heartbeat"
ANSWER = "getStringLength returned 2."
"""What the model says once the approved call ran (the offline model, for `PROMPT`)."""
CUT = (OSError, asyncio.IncompleteReadError)
"""What a replica killed under a stream looks like to its client behind nginx."""
MAX_REATTACHES = 20
PAGE = 1000
"""The most pending sessions `GET /v1/approvals` lists in one call."""
MIB = 1 << 20


@dataclass
class Cluster:
    """The processes behind one nginx, by role."""

    url: str
    nginx: Process
    replicas: list[tuple[str, Process]]
    others: list[Process]
    """Redis, the offline model and the workers."""

    def processes(self) -> list[tuple[str, int]]:
        """(role, pid) of every process: nginx's master and workers, replicas, the rest."""
        rows = [("nginx master", self.nginx.pid)]
        rows += [(f"nginx worker {i + 1}", pid) for i, pid in enumerate(children(self.nginx.pid))]
        rows += [(f"replica {i + 1}", process.pid) for i, (_, process) in enumerate(self.replicas)]
        rows += [(process.name, process.pid) for process in self.others]
        return [*rows, ("client (this)", os.getpid())]


def start_cluster(topology: Topology, args: argparse.Namespace) -> Cluster:
    redis = topology.start_redis()
    topology.start_model()
    others = [redis.process, topology.processes[-1]]  # the model, just started
    others += [
        topology.start_worker(concurrency=args.worker_concurrency) for _ in range(args.workers)
    ]
    replicas = [topology.start_gateway(**HOLDING) for _ in range(3)]
    url = topology.start_nginx([port_of(replica_url) for replica_url, _ in replicas])
    return Cluster(url, topology.processes[-1], replicas, others)  # nginx's master, just started


# ---------------------------------------------------------------------------------------
# What the kernel says about each process.


def children(pid: int) -> list[int]:
    """The processes whose parent is `pid` (nginx's workers)."""
    found = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                stat = (entry / "stat").read_text()
            except OSError:
                continue
            if int(stat.rsplit(")", 1)[1].split()[1]) == pid:
                found.append(int(entry.name))
    return sorted(found)


def descriptors(pid: int) -> int:
    return len(os.listdir(f"/proc/{pid}/fd"))


def descriptor_limit(pid: int) -> int:
    """The soft `Max open files` of a process."""
    for line in Path(f"/proc/{pid}/limits").read_text().splitlines():
        if line.startswith("Max open files"):
            return int(line.split()[3])
    raise ValueError(f"no open-file limit for {pid}")


def established(port: int) -> int:
    """Established TCP connections accepted on `port` (their server ends)."""
    count = 0
    for line in Path("/proc/net/tcp").read_text().splitlines()[1:]:
        fields = line.split()
        if fields[3] == "01" and int(fields[1].rsplit(":", 1)[1], 16) == port:
            count += 1
    return count


def snapshot(cluster: Cluster) -> list[dict[str, Any]]:
    """Descriptors, their limit and RSS of every process."""
    return [
        {
            "process": role,
            "pid": pid,
            "fds": descriptors(pid),
            "fd_limit": descriptor_limit(pid),
            "rss_mib": rss_bytes(pid) / MIB,
        }
        for role, pid in cluster.processes()
    ]


def connections(cluster: Cluster) -> dict[str, int]:
    """Established connections: clients to nginx, and nginx to each replica."""
    counts = {"clients -> nginx": established(port_of(cluster.url))}
    for index, (url, _) in enumerate(cluster.replicas):
        counts[f"nginx -> replica {index + 1}"] = established(port_of(url))
    return counts


async def held_streams(cluster: Cluster) -> list[int]:
    """Each replica's own count of held streams (its /readyz, asked directly)."""
    async with httpx.AsyncClient(timeout=30) as client:
        answers = [await client.get(f"{url}/readyz") for url, _ in cluster.replicas]
    return [int(answer.json()["held_streams"]) for answer in answers]


# ---------------------------------------------------------------------------------------
# The client: one connection and one task per stream, reading SSE line by line (a heartbeat
# is a lone comment line, with no blank line after it).


@dataclass(slots=True)
class HeldStream:
    """What the client saw on one stream (times from `time.perf_counter`)."""

    held_at: float = 0.0
    """When the pending approval notice arrived."""
    session: str = ""
    beats: list[float] = field(default_factory=list)
    resumed: bool = False
    """A `tool_event` arrived after the notice: the decision woke the stream."""
    done_at: float = 0.0
    error: str = ""
    error_at: float = 0.0
    writer: asyncio.StreamWriter | None = None
    last_id: int = 0
    """The last event id received (what a re-attach sends as `Last-Event-ID`)."""
    tool_events: list[str] = field(default_factory=list)
    answer: str = ""
    """The model's text since the last `resumed` (a takeover starts the turn again)."""
    takeovers: int = 0
    """`resumed` events: another replica took the run over."""
    reattaches: int = 0
    sent_elsewhere: bool = False
    """The stream said where to re-attach (a `reattach` chunk): its `[DONE]` is no end."""
    transcript: list[bytes] | None = None
    """Every line but heartbeats, and each cut and re-attach (kept under `--kills`, to
    show what a stream that did not end whole saw)."""

    def note(self, line: bytes) -> None:
        if self.transcript is not None:
            self.transcript.append(line)

    def on_line(self, line: bytes, at: float) -> None:
        if line != HEARTBEAT:
            self.note(line)
        if line == HEARTBEAT:
            self.beats.append(at)
        elif line.startswith(b"id: "):
            seq = int(line[4:])
            if seq <= self.last_id:  # an id that does not increase names two events
                self.fail(f"event id {seq} after {self.last_id}", at)
            self.last_id = seq
        elif line.startswith(b"data: "):
            self._on_data(line, at)

    def _on_data(self, line: bytes, at: float) -> None:
        if line == b"data: [DONE]":
            if self.sent_elsewhere:  # not the end: the run goes on, re-attach for it
                self.sent_elsewhere = False
            else:
                self.done_at = at
        elif b'"reattach":{' in line:
            self.sent_elsewhere = True
        elif line.startswith(b'data: {"error"'):
            self.fail(orjson.loads(line[6:])["error"]["message"], at)
        elif not self.held_at and b'"approval":{' in line:
            approval = orjson.loads(line[6:])["approval"]
            self.session, self.held_at = approval["id"], at
            if approval["status"] != "pending":
                self.fail(f"approval is {approval['status']}", at)
        elif b'"tool_event":{' in line:
            self.resumed = True
            self.tool_events.append(orjson.loads(line[6:])["tool_event"]["type"])
        elif b'"resumed":{' in line:
            self.takeovers += 1
            self.answer = ""
        elif self.resumed and b'"content":' in line:  # the answer (the notice said before)
            for choice in orjson.loads(line[6:])["choices"]:
                self.answer += choice["delta"].get("content") or ""

    def whole(self) -> str:
        """What is wrong with what this stream saw, once it ended ("" when nothing)."""
        if self.error or not self.done_at:
            return self.error or "no [DONE]"
        if self.tool_events != ["executing", "result"]:
            return f"tool events {self.tool_events}"
        if self.answer != ANSWER:
            return f"answer {self.answer!r}"
        return ""

    def fail(self, error: str, at: float) -> None:
        if not self.error:
            self.error, self.error_at = error, at

    def close(self) -> None:
        if self.writer is not None:
            self.writer.close()


async def read_held(url: str, stream: HeldStream, held: asyncio.Event, faults: bool) -> None:
    """POST one streamed chat and read it to its end; `held` is set at its notice (or end).
    With `faults`, a stream cut after its notice (its replica was killed) re-attaches
    through nginx with its last event id, as a client would, until it ends."""
    request = REQUEST.replace(b"HOST", httpx.URL(url).host.encode())
    if faults:
        stream.transcript = []
    try:
        while True:
            try:
                refused = await _read(url, stream, held, request)
            except CUT as error:
                if not (faults and stream.session):
                    raise
                refused = f"{type(error).__name__}: {error}"
                stream.note(f"-- cut: {refused}".encode())
            if stream.done_at or stream.error:
                break
            if not (faults and stream.session) or stream.reattaches == MAX_REATTACHES:
                stream.fail(refused or "ended without [DONE]", time.perf_counter())
                break
            stream.reattaches += 1
            await asyncio.sleep(0.2 * stream.reattaches)
            request = reattach_request(url, stream)
            stream.note(f"-- re-attach after {stream.last_id} ({refused or 'ended'})".encode())
    except (*CUT, asyncio.LimitOverrunError, ValueError) as error:
        stream.fail(f"{type(error).__name__}: {error}", time.perf_counter())
    finally:
        held.set()
        if stream.error:
            stream.close()


def reattach_request(url: str, stream: HeldStream) -> bytes:
    return (
        f"GET /v1/approvals/{stream.session}/stream HTTP/1.1\r\nHost: {httpx.URL(url).host}\r\n"
        f"Accept: text/event-stream\r\nLast-Event-ID: {stream.last_id}\r\n\r\n"
    ).encode()


async def _read(url: str, stream: HeldStream, held: asyncio.Event, request: bytes) -> str:
    """Send `request` and read its stream to its end; what refused it ("" when nothing)."""
    target = httpx.URL(url)
    stream.close()
    reader, stream.writer = await asyncio.open_connection(target.host, target.port)
    stream.writer.write(request)
    head = await reader.readuntil(b"\r\n\r\n")
    if not head.startswith(b"HTTP/1.1 200") or b"chunked" not in head.lower():
        return head.split(b"\r\n", 1)[0].decode()
    partial = b""
    while size := int((await reader.readuntil(b"\r\n")).split(b";")[0], 16):
        *lines, partial = (partial + (await reader.readexactly(size + 2))[:-2]).split(b"\n")
        at = time.perf_counter()
        for line in lines:
            stream.on_line(line, at)
        if stream.held_at or stream.error:
            held.set()
    return ""


@dataclass
class Opened:
    streams: list[HeldStream]
    readers: list[asyncio.Task[None]] = field(default_factory=list)
    open_s: float = 0.0

    @property
    def held(self) -> int:
        return sum(1 for s in self.streams if s.held_at and not s.error)

    def errors(self) -> dict[str, int]:
        counts: dict[str, int] = {}
        for stream in self.streams:
            if stream.error or not stream.held_at:
                reason = stream.error or "no approval notice"
                counts[reason] = counts.get(reason, 0) + 1
        return counts


async def open_streams(url: str, args: argparse.Namespace) -> Opened:
    """Open `--streams` streams, `--rate` a second at most and `--in-flight` at a time;
    return once each shows its approval notice (or failed)."""
    opened = Opened([HeldStream() for _ in range(args.streams)])
    in_flight = asyncio.Semaphore(args.in_flight)

    async def open_one(stream: HeldStream) -> None:
        async with in_flight:
            held = asyncio.Event()
            reader = read_held(url, stream, held, faults=args.kills > 0)
            opened.readers.append(asyncio.create_task(reader))
            await held.wait()

    started = time.perf_counter()
    openers = []
    for index, stream in enumerate(opened.streams):
        await asyncio.sleep(max(0.0, started + index / args.rate - time.perf_counter()))
        openers.append(asyncio.create_task(open_one(stream)))
        if (index + 1) % 1000 == 0:
            print(f"  {index + 1} opening, {opened.held} held", flush=True)
    await asyncio.gather(*openers)
    opened.open_s = time.perf_counter() - started
    print(f"  {opened.held} of {args.streams} held after {opened.open_s:.1f} s", flush=True)
    return opened


@dataclass
class Decisions:
    listed: list[int] = field(default_factory=list)
    """How many pending sessions each `GET /v1/approvals` call listed."""
    statuses: dict[int, int] = field(default_factory=dict)
    list_s: float = 0.0
    """Of `decide_s`, the time spent listing."""
    decide_s: float = 0.0
    last_answered: float = 0.0


async def decide_pages(url: str, args: argparse.Namespace) -> Decisions:
    """List pending approvals through nginx and approve each page, until none is listed."""
    decisions = Decisions()
    started = time.perf_counter()
    async with httpx.AsyncClient(base_url=url, timeout=60) as client:
        for _ in range(args.streams // PAGE + 5 + args.kills):
            listing = time.perf_counter()
            answer = await _list(client, retries=3 if args.kills else 0)
            decisions.list_s += time.perf_counter() - listing
            sessions = [session["id"] for session in answer.json()["data"]]
            decisions.listed.append(len(sessions))
            if not sessions:
                break
            decided = await decide_all(url, sessions, args.decision_concurrency)
            for status, count in decided.statuses.items():
                decisions.statuses[status] = decisions.statuses.get(status, 0) + count
    decisions.last_answered = time.perf_counter()
    decisions.decide_s = decisions.last_answered - started
    return decisions


async def _list(client: httpx.AsyncClient, retries: int) -> httpx.Response:
    """One page of pending approvals (again, while a killed replica makes nginx fail it)."""
    for attempt in range(retries + 1):
        try:
            answer = await client.get("/v1/approvals", params={"limit": PAGE})
            answer.raise_for_status()
            return answer
        except httpx.HTTPError:
            if attempt == retries:
                raise
            await asyncio.sleep(1)
    raise AssertionError("unreachable")


async def kill_replicas(
    topology: Topology, cluster: Cluster, args: argparse.Namespace, stop: asyncio.Event
) -> list[dict[str, Any]]:
    """`--kills` times, about every `--kill-every` s (at random within half of it either
    way) from the hold on: `kill -9` a random replica, then start a new one on its port, as
    an orchestrator would. Stops early when `stop` is set."""
    rng = random.Random(args.seed)
    kills: list[dict[str, Any]] = []
    started = time.perf_counter()
    for _ in range(args.kills):
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(stop.wait(), args.kill_every * rng.uniform(0.5, 1.5))
        if stop.is_set():
            break
        index = rng.randrange(len(cluster.replicas))
        url, process = cluster.replicas[index]
        at = time.perf_counter() - started
        await asyncio.to_thread(process.kill)
        back = time.perf_counter()
        try:
            cluster.replicas[index] = await asyncio.to_thread(
                topology.start_gateway, port_of(url), **HOLDING
            )
        except RuntimeError:
            failed = topology.processes[-1]
            code = failed.popen.returncode if failed.popen is not None else None
            shutil.copy(failed.log_path, f"/tmp/replica-restart-failed-{port_of(url)}.log")
            print(f"  restart of replica {index + 1} failed (exit {code}); its log is kept")
            raise
        kills.append({"replica": index + 1, "at_s": at, "back_s": time.perf_counter() - back})
        print(f"  killed replica {index + 1} at {at:.1f} s; back in {kills[-1]['back_s']:.1f} s")
    return kills


def add_run_logs(redis_url: str, examples: list[dict[str, Any]]) -> None:
    """What Redis holds of each example's run: its log and its meta hash."""
    keys = Keys.of(Settings.model_fields["key_prefix"].default, cluster=False)
    client: Any = redis.Redis.from_url(redis_url, decode_responses=True)
    for example in examples:
        log_id = example["session"]
        entries: Any = client.xrange(keys.run_log(log_id))
        example["log"] = [f"{entry_id} {fields['e'][:160]}" for entry_id, fields in entries]
        example["meta"] = client.hgetall(keys.run_meta(log_id))
    client.close()


async def drain(opened: Opened, since: float, within_s: float) -> dict[str, Any]:
    """Wait for every stream to end; how many ended with [DONE], and when the last did."""
    _, unfinished = await asyncio.wait(opened.readers, timeout=within_s)
    for task in unfinished:
        task.cancel()
    done = [s for s in opened.streams if s.done_at and not s.error]
    last = max((s.done_at for s in done), default=since)
    for stream in opened.streams:
        stream.close()
    wrong: dict[str, int] = {}
    examples: list[dict[str, Any]] = []
    for stream in opened.streams:
        if problem := stream.whole():
            wrong[problem] = wrong.get(problem, 0) + 1
            if len(examples) < 5:
                seen = [line.decode(errors="replace")[:240] for line in stream.transcript or []]
                examples.append({"problem": problem, "session": stream.session, "saw": seen})
    return {
        "done": len(done),
        "whole": len(opened.streams) - sum(wrong.values()),
        "not_whole": dict(sorted(wrong.items(), key=lambda item: -item[1])[:10]),
        "not_whole_examples": examples,
        "reattaches": sum(s.reattaches for s in opened.streams),
        "takeovers_seen": sum(s.takeovers for s in opened.streams),
        "streams_reattached": sum(1 for s in opened.streams if s.reattaches),
        "resumed": sum(1 for s in opened.streams if s.resumed),
        "unfinished": len(unfinished),
        "drain_s": last - since,
        "errors": opened.errors(),
    }


# ---------------------------------------------------------------------------------------


def print_processes(title: str, rows: list[dict[str, Any]]) -> None:
    table(
        title,
        ["process", "pid", "fds", "fd limit", "RSS MiB"],
        [[r["process"], r["pid"], r["fds"], r["fd_limit"], r["rss_mib"]] for r in rows],
    )


def print_connections(title: str, counts: dict[str, int]) -> None:
    table(title, ["connections", "established"], list(counts.items()))


async def hold(cluster: Cluster, opened: Opened, args: argparse.Namespace) -> dict[str, Any]:
    """Hold every stream `--hold` s; what it costs, read at the end of the hold."""
    started = time.perf_counter()
    await asyncio.sleep(args.hold)
    beaten = sum(1 for s in opened.streams if any(beat >= started for beat in s.beats))
    held: dict[str, Any] = {
        "connections": connections(cluster),
        "processes": snapshot(cluster),
        "replica_held_streams": await held_streams(cluster),
        "streams_with_a_heartbeat_in_hold": beaten,
        "failed_while_held": sum(1 for s in opened.streams if s.error and s.error_at >= started),
    }
    print_connections(f"while {opened.held} streams are held", held["connections"])
    print_processes(f"processes while {opened.held} streams are held", held["processes"])
    print(f"  held streams by replica (/readyz): {held['replica_held_streams']}", flush=True)
    print(f"  streams with a heartbeat in the last {args.hold:g} s: {beaten}", flush=True)
    return held


async def run(topology: Topology, args: argparse.Namespace) -> dict[str, Any]:
    cluster = start_cluster(topology, args)
    print(f"- nginx {cluster.url} in front of {[u for u, _ in cluster.replicas]}", flush=True)
    before = snapshot(cluster)
    print_processes("processes before any stream", before)
    print(f"- opening {args.streams} streams through nginx", flush=True)
    opened = await open_streams(cluster.url, args)
    stop_killing = asyncio.Event()  # kills land on held streams, decisions and answers
    killing = asyncio.create_task(kill_replicas(topology, cluster, args, stop_killing))
    held = await hold(cluster, opened, args)
    print("- listing and deciding every pending approval through nginx", flush=True)
    first_decision = time.perf_counter()
    decisions = await decide_pages(cluster.url, args)
    print(f"  listed {decisions.listed}: {sum(decisions.listed)} pending", flush=True)
    print(
        f"  listed and decided in {decisions.decide_s:.1f} s ({decisions.list_s:.1f} s of it"
        f" listing): {decisions.statuses}",
        flush=True,
    )
    drained = await drain(opened, first_decision, args.drain_timeout)
    stop_killing.set()
    kills = await killing
    if topology.redis is not None:
        add_run_logs(topology.redis.url, drained["not_whole_examples"])
    drained["after_last_decision_s"] = first_decision + drained["drain_s"] - decisions.last_answered
    print(
        f"  {drained['done']} of {args.streams} ended with [DONE], the last"
        f" {drained['drain_s']:.1f} s after the first decision; errors {drained['errors']}",
        flush=True,
    )
    await asyncio.sleep(1)
    after: dict[str, Any] = {"connections": connections(cluster), "processes": snapshot(cluster)}
    print_connections("after the drain", after["connections"])
    print_processes("processes after the drain", after["processes"])
    return {
        "streams": args.streams,
        "held": opened.held,
        "open_s": opened.open_s,
        "open_errors": opened.errors(),
        "before": before,
        "while_held": held,
        "pending_listed": sum(decisions.listed),
        "pages": decisions.listed,
        "decision_statuses": decisions.statuses,
        "decide_s": decisions.decide_s,
        "list_s": decisions.list_s,
        **drained,
        "kills": kills,
        "after": after,
    }


def summary(result: dict[str, Any]) -> bool:
    """Print the summary table; whether every stream was held and ended with [DONE]."""
    streams, held = result["streams"], result["while_held"]
    workers = [row["fds"] for row in held["processes"] if row["process"].startswith("nginx w")]
    replicas = [row["fds"] for row in held["processes"] if row["process"].startswith("replica")]
    rows = [
        ["streams held (approval notice)", f"{result['held']} of {streams}"],
        ["time to open s", result["open_s"]],
        ["held by replica (/readyz)", held["replica_held_streams"]],
        ["heartbeat through nginx in the hold", held["streams_with_a_heartbeat_in_hold"]],
        ["fds of nginx workers, replicas", f"{workers}, {replicas}"],
        ["pending approvals listed via nginx", result["pending_listed"]],
        ["list and decide all s (listing)", f"{result['decide_s']:.1f} ({result['list_s']:.1f})"],
        ["first decision -> last [DONE] s", result["drain_s"]],
        ["last decision -> last [DONE] s", result["after_last_decision_s"]],
        ["resumed (tool_event), ended [DONE]", f"{result['resumed']}, {result['done']}"],
        ["whole: executing, result, the answer", result["whole"]],
        ["replicas killed (kill -9) and restarted", len(result["kills"])],
        [
            "streams re-attached, re-attaches",
            f"{result['streams_reattached']}, {result['reattaches']}",
        ],
        ["takeovers seen (resumed)", result["takeovers_seen"]],
        ["errors", result["errors"] or "none"],
        ["not whole", result["not_whole"] or "none"],
    ]
    table(f"{streams} held streams through nginx", ["measure", "value"], rows)
    every = result["held"] == result["done"] == result["whole"] == streams
    # Under kills, a decision nginx could not deliver leaves its session listed again.
    return bool(every and result["pending_listed"] >= streams)


async def main(args: argparse.Namespace) -> None:
    limit = raise_nofile_limit()
    print(f"open-file limit for this process and its children: {limit}", flush=True)
    started = time.perf_counter()
    with Topology() as topology:
        result = await run(topology, args)
    met = summary(result)
    print(f"took {time.perf_counter() - started:.0f} s", flush=True)
    save(
        "held_nginx",
        {"command": command_line("bench.held_nginx", args), "nofile": limit, "met": met, **result},
    )
    if not met:
        raise SystemExit(1)


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--streams", type=int, default=10_000)
    parser.add_argument("--rate", type=float, default=400.0, help="most streams opened a second")
    parser.add_argument("--in-flight", type=int, default=200, help="most opens at a time")
    parser.add_argument("--hold", type=float, default=20.0, help="s all streams are held")
    parser.add_argument("--decision-concurrency", type=int, default=64)
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--worker-concurrency", type=int, default=32)
    parser.add_argument("--drain-timeout", type=float, default=300.0)
    parser.add_argument(
        "--kills", type=int, default=0, help="replicas to kill -9 (and restart) while deciding"
    )
    parser.add_argument("--kill-every", type=float, default=6.0, help="s between kills, about")
    parser.add_argument("--seed", type=int, default=0, help="of the kills' times and targets")
    main_guard(main(parser.parse_args()))
