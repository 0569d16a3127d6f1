"""Pending sessions written straight into a store, for the tests of the store's scripts."""

from __future__ import annotations

import time
from collections.abc import Sequence
from typing import Literal

from core.records import (
    ApprovalSession,
    CallStatus,
    Continuation,
    SessionRecord,
    SessionStatus,
    ToolCallView,
    arguments_sha256,
)
from core.settings import PolicyMode
from core.store import SessionStore, new_session_id


async def new_session(
    store: SessionStore,
    sides: Sequence[Literal["server", "client"]] = ("server",),
    ttl: float = 60,
) -> str:
    """A pending session with one call per side (`call_0`, `call_1`, ...); its id."""
    now = time.time()
    views = [
        ToolCallView(
            id=f"call_{i}",
            name="getStringLength",
            arguments={"text": "x" * i},
            arguments_sha256=arguments_sha256({"text": "x" * i}),
            policy=PolicyMode.ASK,
            status=CallStatus.PENDING,
            side=side,
        )
        for i, side in enumerate(sides)
    ]
    session = ApprovalSession(
        id=new_session_id(),
        status=SessionStatus.PENDING,
        protocol="openai",
        model="m",
        created_at=now,
        expires_at=now + ttl,
        tool_calls=views,
    )
    await store.create(SessionRecord(view=session, continuation=Continuation(messages=[])), {})
    return session.id
