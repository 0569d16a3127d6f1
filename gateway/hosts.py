"""Which `Host` values a replica serves: the allowed-hosts list, and loopback in open mode.

A browser page can reach a gateway on a developer's machine by pointing a name it controls
at 127.0.0.1 (DNS rebinding); its requests then carry that name as `Host`. So an open
gateway (no API keys) serves only loopback `Host` values unless `allowed_hosts` says
otherwise, and any gateway with `allowed_hosts` serves only those. A refusal is a JSON
`invalid_host` error, for every path (health checks included).
"""

from __future__ import annotations

import ipaddress
from collections.abc import Callable, Sequence

from starlette.responses import Response
from starlette.types import ASGIApp, Receive, Scope, Send

from core.errors import GatewayError, InvalidHost

_OPEN_MODE_HOSTS = "without API keys the gateway serves only localhost and loopback addresses"

ErrorResponder = Callable[[str, GatewayError], Response]
"""Renders an error for a path, as `gateway.app` does for every other error."""


def is_loopback(host: str) -> bool:
    """`localhost` or a loopback address (127.0.0.0/8, ::1; brackets allowed)."""
    name = host.strip("[]").lower()
    if name == "localhost":
        return True
    try:
        return ipaddress.ip_address(name).is_loopback
    except ValueError:
        return False


def split_host(value: str) -> tuple[str, str]:
    """A `host[:port]` value (IPv6 in brackets) as (lower-case host, port or "")."""
    value = value.strip().lower()
    if value.startswith("["):
        host, _, rest = value.partition("]")
        return host + "]", rest.removeprefix(":")
    host, colon, port = value.rpartition(":")
    if colon and port.isascii() and port.isdigit():
        return host, port
    return value, ""


def host_allowed(host_header: str, allowed: Sequence[str]) -> bool:
    """Whether a `Host` value matches one entry: `*`, `name`, `*.domain` or any with `:port`."""
    host, port = split_host(host_header)
    for entry in allowed:
        pattern, wanted_port = split_host(entry)
        if wanted_port and wanted_port != port:
            continue
        if pattern == "*" or pattern == host:
            return True
        if pattern.startswith("*.") and host.endswith(pattern[1:]):
            return True
    return False


class HostGuard:
    """ASGI middleware: answers `invalid_host` to a request whose `Host` is not served.

    `allowed` empty means loopback hosts only (open mode); otherwise its entries.
    """

    def __init__(self, app: ASGIApp, allowed: Sequence[str], respond: ErrorResponder) -> None:
        self.app = app
        self.allowed = list(allowed)
        self.respond = respond

    def serves(self, host_header: str) -> bool:
        if self.allowed:
            return host_allowed(host_header, self.allowed)
        return bool(host_header) and is_loopback(split_host(host_header)[0])

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":  # lifespan; the gateway serves no websockets
            await self.app(scope, receive, send)
            return
        # The first Host header, as Starlette's `request.url` reads it.
        raw = next((value for name, value in scope["headers"] if name == b"host"), b"")
        host_header = raw.decode("latin-1")
        if self.serves(host_header):
            await self.app(scope, receive, send)
            return
        why = "it is not in allowed_hosts" if self.allowed else _OPEN_MODE_HOSTS
        error = InvalidHost(
            f"Host {host_header[:200]!r} is not served here: {why}; "
            "add it to GATEWAY_ALLOWED_HOSTS to serve it"
        )
        await self.respond(scope["path"], error)(scope, receive, send)
