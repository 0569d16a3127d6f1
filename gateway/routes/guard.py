"""The one guard in front of every keyed route: authenticate, require a role, refuse while
draining, fail fast while Redis is down; and the typed ways a handler reaches the replica.

A guarded handler takes the request and its authenticated caller; the route table
(`gateway.routes`) says what each route asks for, so no handler repeats it.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from dataclasses import dataclass

from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from core.errors import Unavailable
from gateway.auth import Principal, principal_of
from gateway.replica import Replica
from gateway.runs import RunRegistry
from gateway.sse import StreamSlots

Endpoint = Callable[[Request], Awaitable[Response]]
Handler = Callable[[Request, Principal], Awaitable[Response]]


@dataclass(frozen=True, slots=True)
class Guard:
    """What a route asks of a request before its handler runs."""

    roles: tuple[str, ...] = ()
    """Any one of these (admin has them all); none: any known key."""
    holds: bool = False
    """The route holds a stream: refused while the replica drains, so that the client
    opens it on another replica instead of being cut off moments later."""
    stores: bool = False
    """The route stores new state: refused at once (503) while the wake-up connection says
    Redis is down, instead of waiting out the Redis timeout."""

    def admit(self, request: Request) -> Principal:
        """The caller, once every check passed (401, 403 or 503 otherwise)."""
        caller = principal_of(request)
        if self.roles:
            caller.require(*self.roles)
        if self.holds and runs_of(request).draining:
            raise Unavailable("this replica is shutting down; retry on another")
        if self.stores:
            replica_of(request).check_redis()
        return caller

    def around(self, handler: Handler) -> Endpoint:
        """`handler` behind this guard, as Starlette calls an endpoint."""

        async def endpoint(request: Request) -> Response:
            return await handler(request, self.admit(request))

        endpoint.__name__ = endpoint.__qualname__ = handler.__name__
        endpoint.__doc__ = handler.__doc__
        return endpoint


class GuardedRoute(Route):
    """A route whose handler runs behind its `guard` (the route table's keyed routes)."""

    def __init__(self, method: str, path: str, handler: Handler, guard: Guard) -> None:
        super().__init__(path, guard.around(handler), methods=[method])
        self.guard = guard


def replica_of(request: Request) -> Replica:
    """The services of the replica serving `request`."""
    replica: Replica = request.app.state.replica
    return replica


def runs_of(request: Request) -> RunRegistry:
    """The runs this replica drives."""
    runs: RunRegistry = request.app.state.runs
    return runs


def slots_of(request: Request) -> StreamSlots:
    """The streams this replica holds, and their bound."""
    slots: StreamSlots = request.app.state.stream_slots
    return slots
