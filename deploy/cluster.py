"""`make cluster`: the production topology natively on loopback.

One `redis-server` (AOF, noeviction), the offline model, 3 gateway replicas,
2 workers (each with its `/healthz` and `/metrics` port) and nginx round-robin on
port 8000, rendered from the same `deploy/nginx.conf` that docker-compose uses.
Ctrl-C stops everything.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import re
import resource
import shutil
import signal
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
TEMPLATE = ROOT / "deploy" / "nginx.conf"
_TEMPLATE_SERVER = re.compile(r"(?m)^        server gateway-\d+:8000([^;]*);\n")
"""A replica in deploy/nginx.conf; group 1 is its parameters (max_fails...)."""
NOFILE = 65536
"""The open-file limit the cluster asks for: `worker_rlimit_nofile` of deploy/nginx.conf, and
room for a replica's share of 10,000 held streams."""
NOFILE_RESERVE = 512
"""Descriptors an nginx worker keeps beyond its connections: logs, listeners, temp files."""


def raise_nofile_limit(wanted: int = NOFILE) -> int:
    """Raise this process's open-file limit (children inherit it) to `wanted`, or as far as
    allowed: the hard limit rises only with CAP_SYS_RESOURCE. The soft limit now."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if hard != resource.RLIM_INFINITY and hard < wanted:
        with contextlib.suppress(ValueError, OSError):
            resource.setrlimit(resource.RLIMIT_NOFILE, (wanted, wanted))
            return wanted
    target = wanted if hard == resource.RLIM_INFINITY else min(wanted, hard)
    if target > soft:
        resource.setrlimit(resource.RLIMIT_NOFILE, (target, hard))
    return resource.getrlimit(resource.RLIMIT_NOFILE)[0]


def render_nginx_conf(
    listen_port: int, upstream_ports: list[int], workdir: Path, nofile: int | None = None
) -> str:
    """`deploy/nginx.conf` with local upstreams and paths an unprivileged nginx can write.

    Its descriptor limits are lowered to `nofile` (this process's soft limit unless given,
    which nginx inherits) where that is below what the file asks for."""
    conf = TEMPLATE.read_text()
    first = _TEMPLATE_SERVER.search(conf)
    assert first is not None, "deploy/nginx.conf names no gateway-N:8000 server"
    servers = "".join(f"        server 127.0.0.1:{port}{first[1]};\n" for port in upstream_ports)
    conf = conf[: first.start()] + servers + _TEMPLATE_SERVER.sub("", conf[first.start() :])
    conf = conf.replace("listen 8000 ", f"listen 127.0.0.1:{listen_port} ")
    conf = _fit_descriptors(conf, nofile or resource.getrlimit(resource.RLIMIT_NOFILE)[0])
    temp = "\n".join(
        f"    {kind}_temp_path {workdir}/{kind};"
        for kind in ("client_body", "proxy", "fastcgi", "uwsgi", "scgi")
    )
    conf = conf.replace("http {\n", f"http {{\n    access_log off;\n{temp}\n", 1)
    head = f"pid {workdir}/nginx.pid;\nerror_log {workdir}/nginx-error.log warn;\ndaemon off;\n"
    if os.geteuid() == 0:
        # Started as root (CI): workers stay root, or they could not write their temp paths
        # in `workdir` when a parent is private (pytest's tmp is 0700).
        head += "user root;\n"
    return head + conf


def _fit_descriptors(conf: str, nofile: int) -> str:
    """Lower `worker_rlimit_nofile` to `nofile`, and `worker_connections` to fit under it."""
    limit = int(_directive(conf, "worker_rlimit_nofile"))
    if nofile >= limit:
        return conf
    connections = min(int(_directive(conf, "worker_connections")), nofile - NOFILE_RESERVE)
    conf = re.sub(r"worker_rlimit_nofile \d+;", f"worker_rlimit_nofile {nofile};", conf)
    return re.sub(r"worker_connections \d+;", f"worker_connections {connections};", conf)


def _directive(conf: str, name: str) -> str:
    found = re.search(rf"(?m)^\s*{name} (\S+);", conf)
    assert found is not None, f"deploy/nginx.conf has no {name}"
    return found[1]


def _wait(url: str, timeout: float = 30) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            with urllib.request.urlopen(url, timeout=1):
                return
        except OSError:
            time.sleep(0.1)
    raise RuntimeError(f"{url} did not become ready")


def _interrupt(signum: int, frame: object) -> None:
    raise KeyboardInterrupt


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--port", type=int, default=8000, help="nginx port")
    parser.add_argument("--redis-port", type=int, default=6381)
    parser.add_argument("--first-replica-port", type=int, default=8011)
    parser.add_argument("--offline-port", type=int, default=8002)
    parser.add_argument("--first-worker-metrics-port", type=int, default=9101)
    args = parser.parse_args()

    raise_nofile_limit()
    workdir = ROOT / ".run" / "cluster"
    (workdir / "redis").mkdir(parents=True, exist_ok=True)
    bin_dir = Path(sys.executable).parent
    env = {
        **os.environ,
        "GATEWAY_REDIS_URL": f"redis://127.0.0.1:{args.redis_port}/0",
        "GATEWAY_UPSTREAM_BASE_URL": f"http://127.0.0.1:{args.offline_port}/v1",
    }
    children: list[subprocess.Popen[bytes]] = []

    def start(name: str, argv: list[str], **extra_env: str) -> None:
        log = (workdir / f"{name}.log").open("ab")
        child_env = {**env, **extra_env}
        children.append(subprocess.Popen(argv, env=child_env, stdout=log, stderr=subprocess.STDOUT))

    try:
        start("redis", [
            "redis-server", "--port", str(args.redis_port), "--bind", "127.0.0.1",
            "--dir", str(workdir / "redis"), "--appendonly", "yes", "--appendfsync", "everysec",
            "--maxmemory-policy", "noeviction", "--save", "",
        ])  # fmt: skip
        start("offline-model", [str(bin_dir / "offline-model"), "--port", str(args.offline_port)])
        _wait(f"http://127.0.0.1:{args.offline_port}/health")
        ports = [args.first_replica_port + i for i in range(3)]
        worker_ports = [args.first_worker_metrics_port + i for i in range(2)]
        for i, port in enumerate(worker_ports):
            start(
                f"worker-{i + 1}",
                [str(bin_dir / "gateway-worker")],
                GATEWAY_WORKER__METRICS_PORT=str(port),
            )
        for i, port in enumerate(ports):
            start(f"gateway-{i + 1}", [str(bin_dir / "gateway"), "--port", str(port)])
        for port in ports:
            _wait(f"http://127.0.0.1:{port}/readyz")
        (workdir / "nginx.conf").write_text(render_nginx_conf(args.port, ports, workdir))
        nginx = shutil.which("nginx") or "/usr/sbin/nginx"
        start("nginx", [nginx, "-c", str(workdir / "nginx.conf"), "-p", str(workdir)])
        _wait(f"http://127.0.0.1:{args.port}/readyz")
        for port in worker_ports:
            _wait(f"http://127.0.0.1:{port}/healthz")
        print(
            f"cluster on http://127.0.0.1:{args.port}: replicas {ports}, worker /healthz and"
            f" /metrics on {worker_ports}, logs in {workdir}"
        )
        signal.signal(signal.SIGTERM, _interrupt)
        while True:
            time.sleep(3600)
    except KeyboardInterrupt:
        pass
    finally:
        for child in reversed(children):
            child.terminate()
        for child in children:
            try:
                child.wait(15)
            except subprocess.TimeoutExpired:
                child.kill()


if __name__ == "__main__":
    main()
