"""The one way this project opens Redis: bounded calls, named connections, safe retries."""

from __future__ import annotations

from redis.asyncio import BlockingConnectionPool, Redis
from redis.asyncio.retry import Retry
from redis.backoff import ExponentialBackoff
from redis.exceptions import ConnectionError as RedisConnectionError

from core.settings import Settings


def connect(
    settings: Settings, name: str, *, extra_read_s: float = 0.0, max_connections: int = 0
) -> Redis:
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
    """
    retry = Retry(
        ExponentialBackoff(cap=0.25, base=0.02), retries=3, supported_errors=(RedisConnectionError,)
    )
    pool = BlockingConnectionPool.from_url(
        settings.redis_url,
        max_connections=max_connections or settings.redis_max_connections,
        timeout=settings.redis_pool_wait_s,
        decode_responses=True,
        socket_timeout=settings.redis_timeout_s + extra_read_s,
        socket_connect_timeout=settings.redis_timeout_s,
        client_name=name,
        retry=retry,
    )
    return Redis.from_pool(pool)
