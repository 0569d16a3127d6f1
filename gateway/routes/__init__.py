"""The HTTP edge: every route of a replica, and what each asks of a request.

One module per resource; each holds its handlers and its `OPERATIONS` (what
`GET /openapi.json` says of it). A keyed handler takes `(request, caller)` and runs
behind its `Guard` (`guard.py`), which authenticates, requires the roles given here,
refuses new held streams while the replica drains (`holds`) and refuses new state while
Redis is down (`stores`). Errors become JSON in one place (`gateway.app`).
"""

from __future__ import annotations

from starlette.routing import Route

from gateway.openapi import Operation
from gateway.routes import (
    approvals,
    audit,
    completions,
    feed,
    inbox,
    legacy,
    me,
    models,
    operating,
    reattach,
)
from gateway.routes.guard import Endpoint, Guard, GuardedRoute, Handler

REQUESTER, APPROVER = "requester", "approver"


def routes() -> list[Route]:
    """The route table."""
    return [
        # OpenAI's API, and the approvals around it
        _keyed(
            "POST",
            "/v1/chat/completions",
            completions.chat_completions,
            Guard((REQUESTER,), holds=True, stores=True),
        ),
        _keyed("GET", "/v1/models", models.list_models, Guard()),
        _keyed("GET", "/v1/models/{model_id:path}", models.get_model, Guard()),
        _keyed("GET", "/v1/approvals", approvals.list_approvals, Guard((REQUESTER, APPROVER))),
        _keyed("GET", "/v1/approvals/events", feed.approval_events, Guard((APPROVER,), holds=True)),
        _keyed(
            "GET",
            "/v1/approvals/{session_id}",
            approvals.get_approval,
            Guard((REQUESTER, APPROVER)),
        ),
        # Any known key: the decision requires `approver` once the session is found, so
        # that a refusal is audited against it.
        _keyed("POST", "/v1/approvals/{session_id}/decision", approvals.decide, Guard()),
        _keyed(
            "GET",
            "/v1/approvals/{session_id}/stream",
            reattach.reattach,
            Guard((REQUESTER, APPROVER), holds=True),
        ),
        _keyed("GET", "/v1/audit", audit.list_audit, Guard((APPROVER,))),
        _keyed("GET", "/v1/me", me.me, Guard()),
        # The first version's protocol (its streams end at the approval notice: none held)
        _keyed(
            "POST", "/v1/chat/completion", legacy.chat_completion, Guard((REQUESTER,), stores=True)
        ),
        _keyed("POST", "/v1/chat/approve", legacy.approve, Guard()),
        _open("/health", legacy.health),
        # No key
        _open("/healthz", operating.healthz),
        _open("/readyz", operating.readyz),
        _open("/metrics", operating.metrics_page),
        _open("/openapi.json", operating.openapi_json),
        _open("/inbox", inbox.page),
        _open("/inbox/{name}", inbox.asset),
    ]


OPERATIONS: tuple[Operation, ...] = (
    *completions.OPERATIONS,
    *models.OPERATIONS,
    *approvals.OPERATIONS,
    *feed.OPERATIONS,
    *reattach.OPERATIONS,
    *audit.OPERATIONS,
    *me.OPERATIONS,
    *legacy.OPERATIONS,
    *operating.OPERATIONS,
    *inbox.OPERATIONS,
)
"""What `GET /openapi.json` describes: every route above (tests/test_openapi.py checks)."""
LEGACY_PATHS = frozenset({"/v1/chat/completion", "/v1/chat/approve"})
"""Where errors take the first version's shape."""


def _keyed(method: str, path: str, handler: Handler, guard: Guard) -> Route:
    return GuardedRoute(method, path, handler, guard)


def _open(path: str, endpoint: Endpoint) -> Route:
    """A route anyone may read, without a key."""
    return Route(path, endpoint, methods=["GET"])
