"""The one way this project opens Redis: bounded calls, named connections, safe retries."""

from __future__ import annotations

import asyncio
from typing import TypeAlias

from redis.asyncio import BlockingConnectionPool, Redis, RedisCluster
from redis.asyncio.client import Pipeline
from redis.asyncio.cluster import ClusterPipeline
from redis.asyncio.retry import Retry
from redis.backoff import ExponentialBackoff
from redis.exceptions import (
    ClusterDownError,
    RedisClusterException,
    RedisClusterUnreachableError,
    RedisError,
    SlotNotCoveredError,
    TryAgainError,
)
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import TimeoutError as RedisTimeoutError

from core.settings import Settings

RedisClient: TypeAlias = Redis | RedisCluster
"""What `connect` returns: one server's client, or a Redis Cluster's (`redis_cluster`)."""

RedisPipeline: TypeAlias = Pipeline | ClusterPipeline
"""What `RedisClient.pipeline()` returns."""

UNAVAILABLE_ERRORS: tuple[type[Exception], ...] = (
    RedisConnectionError,
    RedisTimeoutError,
    ClusterDownError,  # a master failed and its replica is not promoted yet
    TryAgainError,  # a slot is mid-migration
    RedisClusterUnreachableError,  # (not a RedisError) no node answers
    SlotNotCoveredError,  # (not a RedisError) no node serves the key's slot
)
"""The one definition of "Redis is unavailable": what either client raises when Redis
cannot serve a call now, and a later call may succeed: what a request is answered 503
`redis_unavailable` for, and what a held stream or readiness waits out. (A raw `OSError`
is not in it: from a request handler it is a bug, not an outage; the loops that read
pub/sub, where redis-py lets one through, catch `REDIS_ERRORS`.)"""

REDIS_ERRORS: tuple[type[Exception], ...] = (RedisError, RedisClusterException, OSError)
"""Anything a Redis call can raise, on either client (the cluster client's own errors are
not `RedisError`s): `UNAVAILABLE_ERRORS` and also replies that no retry fixes (a script
error, a wrong type, a lost lock). What a best-effort write or a loop that must outlive
any Redis failure catches; not a test of whether Redis is up."""


def stop_if_cancelled() -> None:
    """Raise `CancelledError` if the current task is being cancelled.

    redis-py can turn a cancellation that lands mid-command into a connection error (it
    closes the connection on the way out), so a loop that tolerates Redis errors calls this
    where it catches them: a cancelled task still stops (a replica's shutdown awaits its
    background loops; one that swallowed its cancellation held the shutdown forever)."""
    task = asyncio.current_task()
    if task is not None and task.cancelling():
        raise asyncio.CancelledError


async def ping(redis: RedisClient) -> None:
    """Return once Redis answers a PING within its bound; otherwise raise one of
    `UNAVAILABLE_ERRORS` (a refused PING, say by an ACL, counts: this client cannot use it)."""
    try:
        await redis.ping()
    except UNAVAILABLE_ERRORS:
        raise
    except REDIS_ERRORS as error:
        raise RedisConnectionError(f"PING refused: {error}") from error


def connect(
    settings: Settings, name: str, *, extra_read_s: float = 0.0, max_connections: int = 0
) -> RedisClient:
    """A client whose every call is bounded by `redis_timeout_s` (+ `extra_read_s` for reads
    that block on purpose) and whose connections show up as `name` in `CLIENT LIST`.

    A call that fails on a broken connection (Redis restarted, a pooled connection went
    stale) is retried on a fresh one, briefly. That can repeat a command whose reply was
    lost, so every write this project makes is safe to repeat: its Lua scripts compare
    and set, and a repeated job is skipped by the worker. Timeouts are not retried: a
    frozen Redis must surface as an error within the bound, not after several.

    The pool is bounded (`redis_max_connections`) and blocking: when every connection is
    busy, a call waits its turn (up to `redis_pool_wait_s`) instead of failing at once, so
    a burst of ten thousand resumed streams queues on a few dozen connections. (A Redis
    that is down fails fast on connecting, not on this wait.)

    With `redis_cluster` the client is a `RedisCluster` (see `connect_cluster`).
    """
    if settings.redis_cluster:
        return connect_cluster(
            settings, name, extra_read_s=extra_read_s, max_connections=max_connections
        )
    pool = BlockingConnectionPool.from_url(
        settings.redis_url,
        max_connections=max_connections or settings.redis_max_connections,
        timeout=settings.redis_pool_wait_s,
        decode_responses=True,
        socket_timeout=settings.redis_timeout_s + extra_read_s,
        socket_connect_timeout=settings.redis_timeout_s,
        client_name=name,
        retry=_retry(),
    )
    return Redis.from_pool(pool)


def connect_cluster(
    settings: Settings, name: str, *, extra_read_s: float = 0.0, max_connections: int = 0
) -> RedisCluster:
    """A Redis Cluster client that discovers the cluster from `redis_url` (any one node).

    It differs from the single-server client where redis-py's cluster client does:
    `redis_max_connections` bounds the connections to *each* node, and a call that finds
    them all busy fails at once (`MaxConnectionsError`) rather than waiting its turn; and
    a call that times out *is* retried (on a refreshed slot map, since the node may have
    failed over), so a frozen node surfaces after a few bounds rather than one.
    """
    return RedisCluster.from_url(
        settings.redis_url,
        max_connections=max_connections or settings.redis_max_connections,
        decode_responses=True,
        socket_timeout=settings.redis_timeout_s + extra_read_s,
        socket_connect_timeout=settings.redis_timeout_s,
        client_name=name,
        retry=_retry(),
    )


def _retry() -> Retry:
    return Retry(
        ExponentialBackoff(cap=0.25, base=0.02),
        retries=3,
        supported_errors=(RedisConnectionError,),
        is_retryable=_not_cancelled,
    )


def _not_cancelled(error: Exception) -> bool:
    """A connection error in a task being cancelled is the cancellation (redis-py closes the
    connection when one lands mid-command): retried, the call would succeed and the task
    would never learn it was cancelled."""
    task = asyncio.current_task()
    return task is None or not task.cancelling()
