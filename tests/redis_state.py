"""What a stack keeps in Redis, read the way tests check it: a run's lease, the tool-job
stream and its consumer group, and the worker consumer that handled a job.

These are the observable ends of steps that happen in other processes: a test waits on
them (with a deadline) instead of sleeping and hoping the step is over.
"""

from __future__ import annotations

import socket
import time
from typing import TYPE_CHECKING

from tests.mediation import wait_for

if TYPE_CHECKING:
    from tests.conftest import Stack
    from tests.processes import Process

Job = tuple[str, dict[str, str]]
"""A job stream entry: its id and its fields (`session_id`, `tool_call_id`, `tool`, ...)."""


def redis_now_ms(stack: Stack) -> int:
    """Redis's clock in milliseconds: the clock stream entry ids (`<ms>-<seq>`) are taken from."""
    seconds, microseconds = stack.redis.client().time()
    return int(seconds) * 1000 + int(microseconds) // 1000


def entry_ms(entry_id: str) -> int:
    """The millisecond part of a stream entry id."""
    return int(entry_id.split("-", 1)[0])


def jobs_of(stack: Stack, session_id: str) -> list[Job]:
    """Every entry of the stack's job stream that names `session_id`, oldest first."""
    entries: list[Job] = stack.redis.client().xrange(stack.keys.jobs)  # type: ignore[assignment]
    return [(entry_id, job) for entry_id, job in entries if job["session_id"] == session_id]


def _id(entry_id: str) -> tuple[int, int]:
    ms, _, seq = entry_id.partition("-")
    return int(ms), int(seq or 0)


def job_settled(stack: Stack, entry_id: str) -> bool:
    """A worker has read the job `entry_id` (the group's reads are past it) and acknowledged
    it, which a worker does last, once the call's outcome and its audit entry are stored."""
    client, keys = stack.redis.client(), stack.keys
    [group] = [g for g in client.xinfo_groups(keys.jobs) if g["name"] == keys.jobs_group]
    if _id(str(group["last-delivered-id"])) < _id(entry_id):
        return False
    unacked = client.xpending_range(keys.jobs, keys.jobs_group, entry_id, entry_id, 1)
    return not unacked


def consumer_of(worker: Process) -> str:
    """A worker's consumer name in the job group (and in results it stores): host-pid."""
    return f"{socket.gethostname()}-{worker.pid}"


def wait_lease_released(stack: Stack, session_id: str, timeout: float = 10) -> None:
    """Wait until the run of `session_id` has given its lease back (the key is gone)."""
    lease = stack.keys.lease(session_id)
    released = wait_for(lambda: not stack.redis.client().exists(lease), timeout)
    assert released, f"{session_id}: the run still holds its lease after {timeout} s"


def lease_expires_at(stack: Stack, session_id: str) -> float:
    """When the lease of `session_id`'s run lapses unless renewed (unix time; 0 if none)."""
    ttl_ms = int(stack.redis.client().pttl(stack.keys.lease(session_id)))
    return time.time() + ttl_ms / 1000 if ttl_ms >= 0 else 0.0
