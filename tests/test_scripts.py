"""Every Lua script in core/scripts.py compiles on the real Redis (a syntax slip in a rarely
taken path would otherwise surface only when that path runs)."""

from __future__ import annotations

import pytest

from core import scripts
from tests.processes import RedisServer

SCRIPTS = {
    name: value
    for name, value in vars(scripts).items()
    if name.isupper() and not name.startswith("_") and isinstance(value, str)
}


@pytest.mark.parametrize("name", sorted(SCRIPTS))
def test_the_script_compiles(redis_server: RedisServer, name: str) -> None:
    sha = redis_server.client().script_load(SCRIPTS[name])
    assert isinstance(sha, str) and len(sha) == 40


def test_every_script_is_checked() -> None:
    assert {"DECIDE_CALLS", "BEGIN_RUN", "RESERVE_PENDING", "UPDATE_IDEMPOTENCY_KEY"} <= set(
        SCRIPTS
    )


@pytest.mark.parametrize("name", sorted(SCRIPTS))
def test_the_script_publishes_only_in_the_form_a_cluster_rewrites(name: str) -> None:
    """`scripts.register` turns `redis.call('PUBLISH', ` into a sharded publish on a Redis
    Cluster; a publish written any other way would stay unsharded and reach nobody."""
    source = SCRIPTS[name]
    assert source.count("PUBLISH") == source.count("redis.call('PUBLISH', ")
