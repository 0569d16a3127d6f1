"""The HTTP edge: every route of a replica, and what each asks of a request.

One module per resource; each holds its handlers and its `OPERATIONS` (what
`GET /openapi.json` says of it). A keyed handler takes `(request, caller)` and runs
behind `guard.guarded`, which authenticates, requires the roles given here, refuses new
held streams while the replica drains (`holds`) and refuses new state while Redis is
down (`stores`). Errors become JSON in one place (`gateway.app`).
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
from gateway.routes.guard import Endpoint, guarded

REQUESTER, APPROVER = "requester", "approver"


def routes() -> list[Route]:
    """The route table."""
    return [
        # OpenAI's API, and the approvals around it
        _post(
            "/v1/chat/completions",
            guarded(completions.chat_completions, REQUESTER, holds=True, stores=True),
        ),
        _get("/v1/models", guarded(models.list_models)),
        _get("/v1/models/{model_id:path}", guarded(models.get_model)),
        _get("/v1/approvals", guarded(approvals.list_approvals, REQUESTER, APPROVER)),
        _get("/v1/approvals/events", guarded(feed.approval_events, APPROVER, holds=True)),
        _get("/v1/approvals/{session_id}", guarded(approvals.get_approval, REQUESTER, APPROVER)),
        # Any known key: the decision requires `approver` once the session is found, so
        # that a refusal is audited against it.
        _post("/v1/approvals/{session_id}/decision", guarded(approvals.decide)),
        _get(
            "/v1/approvals/{session_id}/stream",
            guarded(reattach.reattach, REQUESTER, APPROVER, holds=True),
        ),
        _get("/v1/audit", guarded(audit.list_audit, APPROVER)),
        _get("/v1/me", guarded(me.me)),
        # The first version's protocol (its streams end at the approval notice: none held)
        _post("/v1/chat/completion", guarded(legacy.chat_completion, REQUESTER, stores=True)),
        _post("/v1/chat/approve", guarded(legacy.approve)),
        _get("/health", legacy.health),
        # No key
        _get("/healthz", operating.healthz),
        _get("/readyz", operating.readyz),
        _get("/metrics", operating.metrics_page),
        _get("/openapi.json", operating.openapi_json),
        _get("/inbox", inbox.page),
        _get("/inbox/{name}", inbox.asset),
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


def _get(path: str, endpoint: Endpoint) -> Route:
    return Route(path, endpoint, methods=["GET"])


def _post(path: str, endpoint: Endpoint) -> Route:
    return Route(path, endpoint, methods=["POST"])
