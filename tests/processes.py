"""Real processes for tests: redis-server, the offline model, gateway replicas and workers.

Each is started on a free loopback port, waited for, and stopped by process id.
"""

from __future__ import annotations

import os
import random
import shutil
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Mapping
from pathlib import Path

import httpx
import redis

ROOT = Path(__file__).resolve().parent.parent


def _ephemeral_ports() -> range:
    """The range the kernel picks outgoing connections' local ports from."""
    try:
        low, high = Path("/proc/sys/net/ipv4/ip_local_port_range").read_text().split()
        return range(int(low), int(high) + 1)
    except (OSError, ValueError):
        return range(32768, 61000)


_EPHEMERAL = _ephemeral_ports()
_LISTEN_PORTS = range(20000, 32000)
"""Where tests' servers listen: below the ephemeral range, so that no outgoing connection
(of this suite or of anything else on the machine) takes a port between its choice and
the server binding it; a port is handed out once per test session."""
_handed_out: set[int] = set()
_choose = random.Random()  # its own, so a seeded global `random` (hypothesis) cannot repeat it


def free_port() -> int:
    """A loopback port nothing listens on, outside the ephemeral range where possible."""
    for _ in range(200):
        port = _choose.choice(_LISTEN_PORTS)
        if port in _handed_out or port in _EPHEMERAL:
            continue
        with socket.socket() as sock:
            try:
                sock.bind(("127.0.0.1", port))
            except OSError:
                continue
        _handed_out.add(port)
        return port
    with socket.socket() as sock:  # the whole range is busy: let the kernel choose
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


class Process:
    """A child process with its output in a log file."""

    def __init__(self, name: str, argv: list[str], env: Mapping[str, str], log_dir: Path) -> None:
        self.name = name
        self.argv = argv
        self.env = {**os.environ, "PYTHONPATH": str(ROOT), **env}
        self.log_path = log_dir / f"{name}.log"
        self.popen: subprocess.Popen[bytes] | None = None

    @property
    def pid(self) -> int:
        assert self.popen is not None
        return self.popen.pid

    def start(self) -> None:
        log = self.log_path.open("ab")
        self.popen = subprocess.Popen(
            self.argv, env=self.env, stdout=log, stderr=subprocess.STDOUT, cwd=ROOT
        )
        log.close()

    def signal(self, sig: signal.Signals) -> None:
        os.kill(self.pid, sig)

    def stop(self, timeout: float = 10.0) -> int | None:
        """SIGTERM, then SIGKILL after `timeout`; the exit code."""
        if self.popen is None or self.popen.poll() is not None:
            return None if self.popen is None else self.popen.returncode
        self.popen.terminate()
        try:
            return self.popen.wait(timeout)
        except subprocess.TimeoutExpired:
            self.popen.kill()
            return self.popen.wait(timeout)

    def kill(self) -> None:
        if self.popen is not None and self.popen.poll() is None:
            self.popen.kill()
            self.popen.wait(10)

    def logs(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""


def wait_http(url: str, process: Process, timeout: float = 30.0) -> None:
    """Wait until `url` answers 200 or the process dies."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if process.popen is not None and process.popen.poll() is not None:
            raise RuntimeError(f"{process.name} exited:\n{process.logs()[-3000:]}")
        try:
            if httpx.get(url, timeout=1.0).status_code == 200:
                return
        except httpx.HTTPError:
            pass
        time.sleep(0.05)
    raise RuntimeError(f"{process.name} not ready at {url}:\n{process.logs()[-3000:]}")


class _RedisOnPort:
    port: int

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def client(self) -> redis.Redis:
        return redis.Redis.from_url(self.url, decode_responses=True)


class RedisServer(_RedisOnPort):
    """A private `redis-server` on a free port that tests may stop, freeze and restart."""

    def __init__(self, workdir: Path) -> None:
        self.port = free_port()
        self.workdir = workdir
        binary = shutil.which("redis-server")
        if binary is None:
            raise RuntimeError("redis-server is not installed (make test installs it)")
        argv = [
            binary, "--port", str(self.port), "--bind", "127.0.0.1", "--save", "",
            "--appendonly", "yes", "--appendfsync", "everysec", "--dir", str(workdir),
            "--maxmemory-policy", "noeviction",
        ]  # fmt: skip
        self.process = Process(f"redis-{self.port}", argv, {}, workdir)

    def start(self) -> None:
        self.process.start()
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            try:
                if self.client().ping():
                    return
            except redis.ConnectionError:
                time.sleep(0.05)
        raise RuntimeError(f"redis-server did not start:\n{self.process.logs()}")

    def stop(self) -> None:
        self.process.stop()
        self.process.popen = None

    def freeze(self) -> None:
        """SIGSTOP: the server holds its connections but answers nothing."""
        self.process.signal(signal.SIGSTOP)

    def thaw(self) -> None:
        if self.process.popen is not None and self.process.popen.poll() is None:
            self.process.signal(signal.SIGCONT)


class ContainerRedis(_RedisOnPort):
    """A testcontainers Redis, used only where `redis-server` is absent but Docker runs."""

    def __init__(self) -> None:
        from testcontainers.redis import RedisContainer

        self.container = RedisContainer("redis:7").with_command(
            "redis-server --appendonly yes --maxmemory-policy noeviction"
        )
        self.port = 0

    def start(self) -> None:
        self.container.start()
        self.port = int(self.container.get_exposed_port(6379))

    def stop(self) -> None:
        self.container.stop()


def docker_engine_available() -> bool:
    docker = shutil.which("docker")
    if docker is None:
        return False
    probe = subprocess.run([docker, "info"], capture_output=True, timeout=20, check=False)
    return probe.returncode == 0


def python_module(module: str, *args: str) -> list[str]:
    return [sys.executable, "-m", module, *args]
