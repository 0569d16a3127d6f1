"""What every benchmark shares: real processes on loopback, /proc readings, a small HTTP/SSE
client, percentiles, and the table and JSON each benchmark prints and writes.

Processes are the same ones the tests start (`tests.processes`): a private redis-server,
the offline model, gateway replicas under uvicorn, workers, nginx. The client is raw
asyncio on uvloop, so that thousands of held streams and sub-millisecond timings are
measured without a heavyweight client in the way.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import platform
import resource
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Coroutine, Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from types import TracebackType
from typing import Any

import httpx
import orjson
import uvloop

from deploy.cluster import render_nginx_conf
from tests.processes import ROOT, Process, RedisServer, free_port, python_module, wait_http

RESULTS = ROOT / "bench" / "results"
CLOCK_TICKS = os.sysconf("SC_CLK_TCK")
PAGE = os.sysconf("SC_PAGE_SIZE")
MODEL = "offline-model"
HOLDING: dict[str, Any] = {
    "tool_policy": '{"getStringLength": "ask"}',
    "approval_timeout_s": 3600,
    "max_held_streams": 50_000,
    "max_pending_sessions": 100_000,
    "max_pending_sessions_per_tenant": 100_000,
}
"""Replica settings of the benchmarks that hold sessions for approval."""


def raise_fd_limit() -> int:
    """Lift this process's open-file limit to its hard limit (children inherit it)."""
    _, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    return hard


def cpu_seconds(pid: int) -> float:
    """User plus system CPU time a process has used, from /proc/<pid>/stat."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / CLOCK_TICKS  # utime, stime


def rss_bytes(pid: int) -> int:
    """Resident set size, from /proc/<pid>/statm."""
    return int(Path(f"/proc/{pid}/statm").read_text().split()[1]) * PAGE


def percentile(values: Sequence[float], p: float) -> float:
    """The p-th percentile (nearest rank) of values; NaN when there are none."""
    if not values:
        return float("nan")
    ordered = sorted(values)
    rank = min(len(ordered) - 1, max(0, round(p / 100 * len(ordered) + 0.5) - 1))
    return ordered[rank]


def machine() -> dict[str, Any]:
    """What the numbers were measured on."""
    cpu = "unknown"
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    return {
        "cpu": cpu,
        "cores": os.cpu_count(),
        "python": platform.python_version(),
        "kernel": platform.release(),
        "redis": subprocess.run(
            [shutil.which("redis-server") or "redis-server", "--version"],
            capture_output=True,
            text=True,
            check=False,
        ).stdout.strip(),
    }


def table(title: str, headers: Sequence[str], rows: Sequence[Sequence[Any]]) -> str:
    """A plain-text table, printed and returned."""
    cells = [[_cell(value) for value in row] for row in rows]
    widths = [max(len(h), *(len(r[i]) for r in cells)) for i, h in enumerate(headers)]
    lines = [title, "  ".join(h.ljust(w) for h, w in zip(headers, widths, strict=True))]
    lines.append("  ".join("-" * w for w in widths))
    lines += ["  ".join(c.rjust(w) for c, w in zip(row, widths, strict=True)) for row in cells]
    text = "\n".join(lines)
    print(text, flush=True)
    return text


def _cell(value: Any) -> str:
    if isinstance(value, float):
        return f"{value:.3f}" if abs(value) < 100 else f"{value:.1f}"
    return str(value)


def command_line(module: str, args: Any) -> str:
    """The command that reproduces a run, for its JSON and BENCHMARKS.md."""
    options = " ".join(f"--{k.replace('_', '-')} {v}" for k, v in vars(args).items())
    return f"python -m {module} {options}".strip()


def save(name: str, data: dict[str, Any]) -> Path:
    """Write a benchmark's results (with the machine) to bench/results/<name>.json."""
    RESULTS.mkdir(parents=True, exist_ok=True)
    path = RESULTS / f"{name}.json"
    record = {"benchmark": name, "at": time.strftime("%Y-%m-%dT%H:%M:%S%z"), **data}
    record["machine"] = machine()
    path.write_text(json.dumps(record, indent=2) + "\n")
    print(f"wrote {path.relative_to(ROOT)}", flush=True)
    return path


@dataclass
class Topology:
    """Real processes on loopback, stopped together when the benchmark ends."""

    workdir: Path = field(default_factory=lambda: Path(tempfile.mkdtemp(prefix="bench-")))
    processes: list[Process] = field(default_factory=list)
    redis: RedisServer | None = None
    env: dict[str, str] = field(default_factory=dict)

    def __enter__(self) -> Topology:
        raise_fd_limit()
        return self

    def __exit__(
        self,
        kind: type[BaseException] | None,
        error: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        for process in reversed(self.processes):
            process.stop()
        if self.redis is not None:
            self.redis.stop()
        if kind is None or not os.environ.get("BENCH_KEEP_FAILED"):
            shutil.rmtree(self.workdir, ignore_errors=True)
        else:
            print(f"kept {self.workdir} (BENCH_KEEP_FAILED)", flush=True)

    def start_redis(self) -> RedisServer:
        self.redis = RedisServer(self.workdir)
        self.redis.start()
        self.env["GATEWAY_REDIS_URL"] = self.redis.url
        return self.redis

    def start_model(self, **settings: Any) -> str:
        """The offline model; its base URL (with /v1). Settings: reply_words, token_delay_s."""
        port = free_port()
        env = {f"GATEWAY_OFFLINE__{k.upper()}": str(v) for k, v in settings.items()}
        argv = python_module("offline_model", "--port", str(port))
        process = self._start("offline-model", argv, env)
        wait_http(f"http://127.0.0.1:{port}/health", process)
        self.env["GATEWAY_UPSTREAM_BASE_URL"] = f"http://127.0.0.1:{port}/v1"
        return f"http://127.0.0.1:{port}/v1"

    def start_gateway(self, port: int = 0, **settings: Any) -> tuple[str, Process]:
        """One replica with the topology's env plus `settings` (GATEWAY_<NAME>), on `port`
        (a free one unless given: a replica restarted where nginx expects it)."""
        port = port or free_port()
        env = {**self.env, **{f"GATEWAY_{k.upper()}": str(v) for k, v in settings.items()}}
        process = self._start(f"gateway-{port}", python_module("gateway", "--port", str(port)), env)
        wait_http(f"http://127.0.0.1:{port}/readyz", process)
        return f"http://127.0.0.1:{port}", process

    def start_holding_replicas(self, count: int) -> list[str]:
        """`count` replicas whose policy holds getStringLength for approval, with room for
        tens of thousands of pending sessions and a deadline no benchmark reaches."""
        return [self.start_gateway(**HOLDING)[0] for _ in range(count)]

    def start_worker(self, **settings: Any) -> Process:
        settings.setdefault("metrics_port", free_port())  # its own /healthz and /metrics port
        env = {**self.env, **{f"GATEWAY_WORKER__{k.upper()}": str(v) for k, v in settings.items()}}
        return self._start(f"worker-{len(self.processes)}", python_module("worker"), env)

    def start_app(self, name: str, module: str, *args: str, **env: str) -> tuple[str, Process]:
        """A benchmark's own baseline server (`python -m module --port N ...`)."""
        port = free_port()
        process = self._start(name, python_module(module, "--port", str(port), *args), env)
        wait_http(f"http://127.0.0.1:{port}/health", process)
        return f"http://127.0.0.1:{port}", process

    def start_nginx(self, upstream_ports: list[int]) -> str:
        port = free_port()
        workdir = self.workdir / f"nginx-{port}"
        workdir.mkdir()
        conf = workdir / "nginx.conf"
        conf.write_text(render_nginx_conf(port, upstream_ports, workdir))
        nginx = shutil.which("nginx") or "/usr/sbin/nginx"
        process = self._start(f"nginx-{port}", [nginx, "-c", str(conf), "-p", str(workdir)], {})
        wait_http(f"http://127.0.0.1:{port}/healthz", process)
        return f"http://127.0.0.1:{port}"

    def _start(self, name: str, argv: list[str], env: dict[str, str]) -> Process:
        process = Process(name, argv, env, self.workdir)
        process.start()
        self.processes.append(process)
        return process


def port_of(url: str) -> int:
    return int(httpx.URL(url).port or 80)


# ---------------------------------------------------------------------------------------
# A small HTTP/1.1 client for SSE: one connection per stream, chunked decoding, timestamps.


@dataclass(slots=True)
class SSEEvent:
    """One event as it arrived: `data` is None for a comment (a heartbeat)."""

    at: float
    data: bytes | None
    id: int | None = None


class SSEStream:
    """A POSTed (or GET) request whose response is read as server-sent events."""

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self._reader = reader
        self._writer = writer
        self._buffer = b""
        self._chunked = False
        self.status = 0

    @classmethod
    async def open(
        cls, url: str, path: str, body: dict[str, Any] | None = None, headers: str = ""
    ) -> SSEStream:
        target = httpx.URL(url)
        reader, writer = await asyncio.open_connection(target.host, target.port, limit=1 << 20)
        stream = cls(reader, writer)
        payload = orjson.dumps(body) if body is not None else b""
        method = "POST" if body is not None else "GET"
        request = (
            f"{method} {path} HTTP/1.1\r\nHost: {target.host}\r\nAccept: text/event-stream\r\n"
            f"Content-Type: application/json\r\nContent-Length: {len(payload)}\r\n{headers}\r\n"
        ).encode()
        writer.write(request + payload)
        await stream._read_head()
        return stream

    async def _read_head(self) -> None:
        head = await self._reader.readuntil(b"\r\n\r\n")
        lines = head.decode("latin-1").split("\r\n")
        self.status = int(lines[0].split()[1])
        headers = {k.lower(): v.strip() for k, _, v in (h.partition(":") for h in lines[1:] if h)}
        self._chunked = headers.get("transfer-encoding", "").lower() == "chunked"
        if not self._chunked and "content-length" in headers:
            self._buffer = await self._reader.readexactly(int(headers["content-length"]))

    async def _more(self) -> bool:
        """Read more body into the buffer; False at the end of the body."""
        if not self._chunked:
            data = await self._reader.read(65536)
            self._buffer += data
            return bool(data)
        size_line = await self._reader.readuntil(b"\r\n")
        size = int(size_line.split(b";")[0], 16)
        data = await self._reader.readexactly(size + 2)
        self._buffer += data[:-2]
        return size > 0

    async def events(self) -> Any:
        """Async iterator of `SSEEvent`s until the body ends."""
        while True:
            while True:
                if self._buffer.startswith(b":") and b"\n" in self._buffer:
                    # A heartbeat: a comment line on its own, no blank line after it.
                    _, self._buffer = self._buffer.split(b"\n", 1)
                    yield SSEEvent(time.perf_counter(), None)
                elif self._buffer.startswith(b"\n"):
                    self._buffer = self._buffer[1:]
                elif b"\n\n" in self._buffer:
                    raw, self._buffer = self._buffer.split(b"\n\n", 1)
                    yield _parse(raw, time.perf_counter())
                else:
                    break
            if not await self._more():
                return

    def close(self) -> None:
        self._writer.close()


def _parse(raw: bytes, at: float) -> SSEEvent:
    if raw.startswith(b":"):
        return SSEEvent(at, None)
    event_id: int | None = None
    data: list[bytes] = []
    for line in raw.split(b"\n"):
        if line.startswith(b"data: "):
            data.append(line[6:])
        elif line.startswith(b"id: "):
            event_id = int(line[4:])
    return SSEEvent(at, b"\n".join(data), event_id)


def chat_body(prompt: str, *, usage: bool = False) -> dict[str, Any]:
    body: dict[str, Any] = {
        "model": MODEL,
        "stream": True,
        "messages": [{"role": "user", "content": prompt}],
    }
    if usage:
        body["stream_options"] = {"include_usage": True}
    return body


async def at_rate(rate: float, sends: Iterable[Coroutine[Any, Any, None]]) -> float:
    """Start each of `sends` 1/`rate` s after the one before (open loop: no waiting for
    replies), then wait for all; the seconds the starting took."""
    tasks = []
    started = time.perf_counter()
    for index, send in enumerate(sends):
        delay = started + index / rate - time.perf_counter()
        if delay > 0:
            await asyncio.sleep(delay)
        tasks.append(asyncio.create_task(send))
    sent_s = time.perf_counter() - started
    await asyncio.gather(*tasks)
    return sent_s


async def post_json(
    client: httpx.AsyncClient, url: str, body: dict[str, Any]
) -> tuple[int, float, Any]:
    """POST and time it: (status, seconds, decoded body)."""
    started = time.perf_counter()
    response = await client.post(url, content=orjson.dumps(body))
    return response.status_code, time.perf_counter() - started, response.json()


@contextlib.contextmanager
def phase(name: str) -> Iterator[None]:
    started = time.perf_counter()
    print(f"- {name} ...", flush=True)
    yield
    print(f"  {name}: {time.perf_counter() - started:.1f} s", flush=True)


def main_guard(coroutine: Any) -> None:
    """Run a benchmark's async main on uvloop; a failure exits non-zero."""
    try:
        uvloop.run(coroutine)
    except KeyboardInterrupt:
        sys.exit(130)
