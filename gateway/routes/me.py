"""`GET /v1/me`: who an API key is."""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel
from starlette.requests import Request
from starlette.responses import JSONResponse

from gateway.auth import Authenticator, Principal
from gateway.openapi import Operation, Reply


class PrincipalView(BaseModel):
    """Who a key is, as `GET /v1/me` shows it."""

    object: Literal["principal"] = "principal"
    name: str
    tenant: str
    roles: list[str]
    """Sorted: `requester`, `approver`, `admin`."""
    open: bool
    """The gateway runs without API keys: every caller is `anonymous` with every role."""


async def me(request: Request, caller: Principal) -> JSONResponse:
    """Who the key is (name, tenant, roles), so a client can say whose decisions are its
    own and which calls it may not decide (its own requests). Guarded: any known key."""
    authenticator: Authenticator = request.app.state.authenticator
    view = PrincipalView(
        name=caller.name,
        tenant=caller.tenant,
        roles=sorted(caller.roles),
        open=authenticator.open,
    )
    return JSONResponse(view.model_dump())


OPERATIONS = (
    Operation(
        "GET",
        "/v1/me",
        "Who the API key is",
        {200: Reply("The key's name, tenant and roles", PrincipalView)},
        description="So a client can tell whose decisions are its own, and which calls it may "
        "not decide (its own requests). Any known key.",
    ),
)
