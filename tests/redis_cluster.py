"""A real Redis Cluster for tests: three masters, each with one replica, on loopback ports.

`RedisCluster` starts six `redis-server` processes in cluster mode, joins them with
`redis-cli --cluster create`, and waits until every node says the cluster is whole. Tests
may fail a master over to its replica, or kill a node, and wait for the cluster to settle.
"""

from __future__ import annotations

import shutil
import subprocess
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
import redis

from tests.processes import Process, free_port

SLOTS = 16384
NODE_TIMEOUT_MS = 2000
"""Short, so a failover (and noticing a dead node) takes seconds, not the default fifteen."""


class ClusterMember:
    """One `redis-server` of the cluster, a master or a replica (roles change on failover)."""

    def __init__(self, binary: str, workdir: Path) -> None:
        self.port = free_port()
        self.workdir = workdir / str(self.port)
        self.workdir.mkdir()
        argv = [
            binary, "--port", str(self.port), "--bind", "127.0.0.1", "--save", "",
            "--appendonly", "yes", "--dir", str(self.workdir),
            "--cluster-enabled", "yes", "--cluster-config-file", "nodes.conf",
            "--cluster-port", str(free_port()),
            "--cluster-node-timeout", str(NODE_TIMEOUT_MS),
            "--maxmemory-policy", "noeviction",
        ]  # fmt: skip
        self.process = Process(f"redis-cluster-{self.port}", argv, {}, workdir)

    def __repr__(self) -> str:
        return f"ClusterMember({self.address})"

    @property
    def address(self) -> str:
        return f"127.0.0.1:{self.port}"

    @property
    def alive(self) -> bool:
        popen = self.process.popen
        return popen is not None and popen.poll() is None

    def client(self) -> redis.Redis:
        """A plain client of this one node (no redirects followed)."""
        return redis.Redis(port=self.port, decode_responses=True, socket_timeout=5)

    def ask(self, *command: str) -> str:
        """Run one command on this node; its reply as text."""
        with self.client() as client:
            return str(client.execute_command(*command))

    def role(self) -> tuple[str, int | None]:
        """('master', None) or ('slave', the master's port)."""
        with self.client() as client:
            reply = client.execute_command("ROLE")
        if reply[0] == "master":
            return "master", None
        return str(reply[0]), int(reply[2])

    def cluster_info(self) -> dict[str, str]:
        lines = self.ask("CLUSTER", "INFO").splitlines()
        return dict(line.split(":", 1) for line in lines if ":" in line)

    def slot_owners(self) -> dict[int, int]:
        """This node's view of which master (by port) serves each slot."""
        with self.client() as client:
            ranges = client.execute_command("CLUSTER", "SLOTS")
        # Each range is [first, last, [master host, port, id], replicas...].
        owners: dict[int, int] = {}
        for first, last, master, *_replicas in ranges:
            for slot in range(int(first), int(last) + 1):
                owners[slot] = int(master[1])
        return owners

    def start(self) -> None:
        self.process.start()
        _wait_until(self._answers, 10, f"{self} did not start (see {self.process.log_path})")

    def _answers(self) -> bool:
        try:
            return bool(self.client().ping())
        except redis.ConnectionError:
            return False

    def kill(self) -> None:
        self.process.kill()

    def stop(self) -> None:
        self.process.stop()


class RedisCluster:
    """Six `redis-server` processes as a cluster of three masters, each with one replica."""

    def __init__(self, workdir: Path, masters: int = 3) -> None:
        server = shutil.which("redis-server")
        self._cli = shutil.which("redis-cli")
        if server is None or self._cli is None:
            raise RuntimeError("redis-server and redis-cli are needed (make test installs them)")
        self.workdir = workdir
        self.members = [ClusterMember(server, workdir) for _ in range(masters * 2)]

    @property
    def url(self) -> str:
        """`redis://` URL of one master (a cluster client discovers the rest from it)."""
        return f"redis://{self.masters()[0].address}"

    def client(self) -> redis.RedisCluster:
        """A cluster client (follows the slot map)."""
        master = self.masters()[0]
        return redis.RedisCluster(host="127.0.0.1", port=master.port, decode_responses=True)

    def start(self) -> None:
        """Start every node, join them into a cluster, and wait until it serves every slot."""
        for member in self.members:
            member.start()
        assert self._cli is not None
        create = [self._cli, "--cluster", "create", *(m.address for m in self.members)]
        subprocess.run(
            [*create, "--cluster-replicas", "1", "--cluster-yes"],
            check=True, capture_output=True, timeout=60,
        )  # fmt: skip
        self.wait_healthy()

    def stop(self) -> None:
        """Stop every node (idempotent)."""
        for member in self.members:
            member.stop()

    def live(self) -> list[ClusterMember]:
        return [m for m in self.members if m.alive]

    def masters(self) -> list[ClusterMember]:
        """The live nodes that are masters now."""
        return [m for m in self.live() if m.role()[0] == "master"]

    def replica_of(self, master: ClusterMember) -> ClusterMember:
        """A live replica of `master`."""
        for member in self.live():
            if member.role() == ("slave", master.port):
                return member
        raise LookupError(f"{master} has no live replica")

    def master_of(self, key: str) -> ClusterMember:
        """The master serving `key`'s slot now."""
        slot = int(self.live()[0].ask("CLUSTER", "KEYSLOT", key))
        owner = self.live()[0].slot_owners()[slot]
        return next(m for m in self.members if m.port == owner)

    def failover(self, master: ClusterMember) -> ClusterMember:
        """Promote `master`'s replica with `CLUSTER FAILOVER` (a manual, lossless one); wait
        until the two have swapped roles and the cluster is whole again; the new master."""
        replica = self.replica_of(master)
        slots = {s for s, port in master.slot_owners().items() if port == master.port}
        replica.ask("CLUSTER", "FAILOVER")

        def swapped() -> bool:
            return replica.role()[0] == "master" and master.role() == ("slave", replica.port)

        _wait_until(swapped, 30, f"{replica} did not take over from {master}")
        self.wait_healthy(moved={slot: replica.port for slot in slots})
        return replica

    def kill(self, member: ClusterMember) -> None:
        """SIGKILL one node; the cluster fails its slots over if it was a master."""
        member.kill()

    def wait_healthy(self, timeout: float = 30.0, moved: dict[int, int] | None = None) -> None:
        """Until every live node says `cluster_state:ok` with every slot served, agrees on
        who serves each slot (and, for `moved`, that it is the given port), and every
        replica's link to its master is up."""
        expected = moved or {}

        def healthy() -> bool:
            live = self.live()
            views = [m.slot_owners() for m in live]
            whole = all(_serves_every_slot(m.cluster_info()) for m in live)
            agreed = all(view == views[0] for view in views) and len(views[0]) == SLOTS
            placed = all(views[0].get(slot) == port for slot, port in expected.items())
            return whole and agreed and placed and all(_replica_linked(m) for m in live)

        _wait_until(healthy, timeout, "the cluster did not become healthy")


def _serves_every_slot(info: dict[str, str]) -> bool:
    return (
        info.get("cluster_state") == "ok"
        and info.get("cluster_slots_assigned") == str(SLOTS)
        and info.get("cluster_slots_ok") == str(SLOTS)
    )


def _replica_linked(member: ClusterMember) -> bool:
    with member.client() as client:
        replication = client.info("replication")
    return bool(replication["role"] == "master" or replication["master_link_status"] == "up")


def _wait_until(condition: Callable[[], bool], timeout: float, failure: str) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            if condition():
                return
        except redis.RedisError:
            pass  # a node mid-change refuses or redirects: ask again
        time.sleep(0.05)
    raise RuntimeError(failure)


@pytest.fixture(scope="module", name="redis_cluster")
def redis_cluster_fixture(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RedisCluster]:
    """`redis_cluster`: a running cluster of three masters with one replica each, private to
    the test module (a module whose tests kill nodes should start its own)."""
    cluster = RedisCluster(tmp_path_factory.mktemp("redis-cluster"))
    try:
        cluster.start()
        yield cluster
    finally:
        cluster.stop()
