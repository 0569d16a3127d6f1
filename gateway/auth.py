"""API keys, tenants and roles.

A key is presented as `Authorization: Bearer <key>`; the gateway keeps only the SHA-256
of each key and compares digests in constant time. Each key has a name (the actor in the
audit log), a tenant and roles:

- `requester`: chat; reads its own tenant's sessions and re-attaches to their streams;
- `approver`: lists and decides its own tenant's sessions (and reads their audit entries);
- `admin`: everything, in every tenant.

With no keys configured the gateway runs open: every caller is `anonymous` in tenant
`default` with every role, and the log and `/readyz` say so.
"""

from __future__ import annotations

import hashlib
import hmac
from collections.abc import Iterable
from dataclasses import dataclass

import structlog
from starlette.requests import Request

from core.errors import Forbidden, SessionNotFound, Unauthorized
from core.records import ApprovalSession
from core.settings import ApiKey

log = structlog.stdlib.get_logger(__name__)

ROLES = frozenset({"requester", "approver", "admin"})


@dataclass(frozen=True, slots=True)
class Principal:
    """Who is calling."""

    name: str
    tenant: str
    roles: frozenset[str]

    def has(self, *roles: str) -> bool:
        return "admin" in self.roles or any(role in self.roles for role in roles)

    def require(self, *roles: str) -> None:
        """403 unless the principal has one of `roles` (admin has them all)."""
        if not self.has(*roles):
            raise Forbidden(f"this needs the role {' or '.join(roles)}; {self.name!r} lacks it")

    def sees(self, session: ApprovalSession) -> bool:
        return "admin" in self.roles or session.tenant == self.tenant

    def require_sees(self, session: ApprovalSession) -> None:
        """Another tenant's session is reported as missing: its existence is not shared."""
        if not self.sees(session):
            raise SessionNotFound(f"no approval session {session.id!r}")


OPEN = Principal("anonymous", "default", ROLES)


def hash_key(key: str) -> str:
    """How a key is stored: the SHA-256 hex of its UTF-8 bytes."""
    return hashlib.sha256(key.encode()).hexdigest()


class Authenticator:
    """Maps a request's bearer key to its principal."""

    def __init__(self, keys: Iterable[ApiKey]) -> None:
        self._keys = [
            (bytes.fromhex(k.sha256), Principal(k.name, k.tenant, frozenset(k.roles))) for k in keys
        ]
        unknown = {r for _, p in self._keys for r in p.roles} - ROLES
        if unknown:
            raise ValueError(f"api_keys: unknown roles {sorted(unknown)}; use {sorted(ROLES)}")

    @property
    def open(self) -> bool:
        return not self._keys

    def principal(self, request: Request) -> Principal:
        """The caller, or 401."""
        if self.open:
            return OPEN
        scheme, _, key = request.headers.get("authorization", "").partition(" ")
        if scheme.lower() != "bearer" or not key.strip():
            raise Unauthorized("send an API key as 'Authorization: Bearer <key>'")
        digest = hashlib.sha256(key.strip().encode()).digest()
        found = None
        for stored, principal in self._keys:  # every key compared, in constant time each
            if hmac.compare_digest(stored, digest):
                found = principal
        if found is None:
            raise Unauthorized("this API key is not known")
        return found


def principal_of(request: Request) -> Principal:
    """The authenticated caller of a request (every route calls this first); its tenant is
    on the request's log lines from here on."""
    authenticator: Authenticator = request.app.state.authenticator
    principal = authenticator.principal(request)
    structlog.contextvars.bind_contextvars(tenant=principal.tenant)
    return principal
