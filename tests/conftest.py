"""Fixtures that start the real parts: Redis, the offline model, gateway replicas, workers."""

from __future__ import annotations

import itertools
import shutil
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import httpx
import pytest

from core.keys import Keys
from core.logs import route_to_logging
from deploy.cluster import raise_nofile_limit, render_nginx_conf
from tests.hostile import HostileUpstream
from tests.mediation import policy_file
from tests.processes import (
    ContainerRedis,
    Process,
    RedisServer,
    docker_engine_available,
    free_port,
    python_module,
    wait_http,
)
from tests.redis_cluster import RedisCluster
from tests.tools import MEDIATION_POLICY

TEST_POLICY = '{"lookupCapital": "auto", "forbiddenTool": "deny", "explode": "ask"}'
_prefixes = itertools.count()


@pytest.fixture(scope="session", autouse=True)
def events_through_logging() -> None:
    """structlog's events go through `logging`, as in the processes (so `caplog` sees them,
    each record's `msg` the event's fields)."""
    route_to_logging()


@pytest.fixture(scope="session", autouse=True)
def nofile_limit() -> int:
    """The open-file limit every process the tests start inherits, raised as far as allowed
    (nginx and replicas behind it hold two and one descriptors per stream)."""
    return raise_nofile_limit()


@pytest.fixture(scope="session")
def redis_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RedisServer]:
    """A private Redis: a native `redis-server`, or a testcontainers one when only Docker has it."""
    server: RedisServer
    if shutil.which("redis-server") is None and docker_engine_available():
        server = ContainerRedis()  # type: ignore[assignment]
    else:
        server = RedisServer(tmp_path_factory.mktemp("redis"))
    server.start()
    yield server
    server.stop()


@pytest.fixture
def private_redis(tmp_path: Path) -> Iterator[RedisServer]:
    """A Redis of this test's own, to stop, freeze and restart."""
    server = RedisServer(tmp_path / "redis")
    server.workdir.mkdir()
    server.start()
    yield server
    server.thaw()
    server.stop()


def serve_http(module: str, workdir: Path) -> tuple[Process, str]:
    """Start `python -m module --port N` on a free port and wait for its /health; (it, base URL)."""
    port = free_port()
    process = Process(module, python_module(module, "--port", str(port)), {}, workdir)
    process.start()
    wait_http(f"http://127.0.0.1:{port}/health", process)
    return process, f"http://127.0.0.1:{port}"


@pytest.fixture(scope="session")
def offline_model(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """Base URL (with /v1) of a running offline model."""
    process, url = serve_http("offline_model", tmp_path_factory.mktemp("offline"))
    yield f"{url}/v1"
    process.stop()


@pytest.fixture(scope="session")
def hostile_upstream(tmp_path_factory: pytest.TempPathFactory) -> Iterator[HostileUpstream]:
    """A running hostile upstream (tests/hostile_upstream.py) and its client."""
    process, url = serve_http("tests.hostile_upstream", tmp_path_factory.mktemp("hostile"))
    yield HostileUpstream(url)
    process.stop()


@dataclass
class Stack:
    """Gateway replicas and workers sharing one Redis and one key prefix."""

    redis: RedisServer | RedisCluster
    """One redis-server, or a cluster of them (then the stack runs with GATEWAY_REDIS_CLUSTER)."""
    upstream: str
    log_dir: Path
    prefix: str
    overrides: dict[str, str] = field(default_factory=dict)
    replicas: list[Replica] = field(default_factory=list)
    workers: list[Process] = field(default_factory=list)
    worker_ports: list[int] = field(default_factory=list)
    """Each worker's `/healthz` and `/metrics` port, in the order of `workers`."""
    balancers: list[Process] = field(default_factory=list)

    @property
    def keys(self) -> Keys:
        """The key names the stack's processes use."""
        return Keys.of(self.prefix, cluster=isinstance(self.redis, RedisCluster))

    def env(self) -> dict[str, str]:
        return {
            "GATEWAY_REDIS_URL": self.redis.url,
            "GATEWAY_KEY_PREFIX": self.prefix,
            "GATEWAY_UPSTREAM_BASE_URL": self.upstream,
            "GATEWAY_TOOLS": "tests.tools:TOOLS",
            "GATEWAY_TOOL_POLICY": TEST_POLICY,
            "GATEWAY_WORKER__BLOCK_MS": "500",
            **self.overrides,
        }

    def add_replica(self) -> Replica:
        replica = Replica(self, free_port())
        replica.start()
        self.replicas.append(replica)
        return replica

    def add_worker(self) -> Process:
        """Start a worker with a health port of its own (`worker_ports`); not waited for."""
        name = f"worker-{self.prefix}-{len(self.workers)}"
        port = free_port()
        env = {**self.env(), "GATEWAY_WORKER__METRICS_PORT": str(port)}
        worker = Process(name, python_module("worker"), env, self.log_dir)
        worker.start()
        self.workers.append(worker)
        self.worker_ports.append(port)
        return worker

    def add_nginx(self) -> str:
        """nginx round-robin in front of the replicas (rendered from deploy/nginx.conf); its URL."""
        port = free_port()
        workdir = self.log_dir / f"nginx-{port}"
        workdir.mkdir()
        conf = workdir / "nginx.conf"
        conf.write_text(render_nginx_conf(port, [r.port for r in self.replicas], workdir))
        nginx = shutil.which("nginx") or "/usr/sbin/nginx"
        argv = [nginx, "-c", str(conf), "-p", str(workdir)]
        process = Process(f"nginx-{port}", argv, {}, workdir)
        process.start()
        self.balancers.append(process)
        wait_http(f"http://127.0.0.1:{port}/healthz", process)
        return f"http://127.0.0.1:{port}"

    def stop(self) -> None:
        for process in [*self.balancers, *(r.process for r in self.replicas), *self.workers]:
            process.stop()


@dataclass
class Replica:
    """One gateway process (a uvicorn server)."""

    stack: Stack
    port: int
    process: Process = field(init=False)

    def __post_init__(self) -> None:
        self.process = Process(
            f"gateway-{self.stack.prefix}-{self.port}",
            python_module("gateway", "--port", str(self.port)),
            self.stack.env(),
            self.stack.log_dir,
        )

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self) -> None:
        self.process.start()
        wait_http(f"{self.url}/readyz", self.process)

    def restart(self) -> None:
        self.process.stop()
        self.process.popen = None
        self.start()

    def client(self) -> httpx.Client:
        return httpx.Client(base_url=self.url, timeout=30.0)


StackFactory = Callable[..., Stack]


@pytest.fixture
def make_stack(
    redis_server: RedisServer, offline_model: str, tmp_path: Path
) -> Iterator[StackFactory]:
    """Build a stack: `make_stack(replicas=1, workers=1, **settings)`; each gets its own prefix.
    `upstream` is the model's base URL (with /v1); the offline model unless given."""
    stacks: list[Stack] = []

    def build(
        replicas: int = 1,
        workers: int = 1,
        redis: RedisServer | RedisCluster | None = None,
        upstream: str | None = None,
        **settings: str,
    ) -> Stack:
        server = redis or redis_server
        if isinstance(server, RedisCluster):
            settings.setdefault("redis_cluster", "1")
        overrides = {f"GATEWAY_{name.upper()}": value for name, value in settings.items()}
        model = upstream or offline_model
        stack = Stack(server, model, tmp_path, f"t{next(_prefixes)}", overrides)
        stacks.append(stack)
        for _ in range(workers):
            stack.add_worker()
        for _ in range(replicas):
            stack.add_replica()
        return stack

    yield build
    for stack in stacks:
        stack.stop()


@pytest.fixture(scope="module")
def shared_stack(
    redis_server: RedisServer, offline_model: str, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Stack]:
    """One replica and one worker with default settings, shared by a module's tests."""
    stack = Stack(
        redis_server, offline_model, tmp_path_factory.mktemp("stack"), f"m{next(_prefixes)}"
    )
    stack.add_worker()
    stack.add_replica()
    yield stack
    stack.stop()


@pytest.fixture
def gateway(shared_stack: Stack) -> Replica:
    return shared_stack.replicas[0]


@pytest.fixture(scope="module")
def mediated(
    redis_server: RedisServer,
    hostile_upstream: HostileUpstream,
    tmp_path_factory: pytest.TempPathFactory,
) -> Iterator[Stack]:
    """One replica and one worker behind the hostile upstream, under MEDIATION_POLICY."""
    workdir = tmp_path_factory.mktemp("mediated")
    settings = {
        "GATEWAY_POLICY_FILE": policy_file(workdir, MEDIATION_POLICY),
        "GATEWAY_HEARTBEAT_INTERVAL_S": "1",
        "GATEWAY_APPROVAL_TIMEOUT_S": "60",
        "GATEWAY_MAX_UPSTREAM_TURN_BYTES": str(32 * 1024 * 1024),  # room for 10,000 calls
    }
    stack = Stack(redis_server, hostile_upstream.url, workdir, f"md{next(_prefixes)}", settings)
    stack.add_worker()
    stack.add_replica()
    yield stack
    stack.stop()
