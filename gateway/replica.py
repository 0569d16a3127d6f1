"""`Replica`: what one gateway replica's requests and conversations share.

`create_app` builds one in its lifespan; the handlers reach it through the request
(`gateway.routes.guard.replica_of`), the conversation loop and the runs through an argument.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from core.audit import AuditLog
from core.errors import RedisUnavailable
from core.grants import ConversationIds, ConversationTaint, Grants
from core.handoffs import Handoffs
from core.idempotency import IdempotentRequests
from core.jobs import JobQueue
from core.settings import Settings
from core.store import SessionStore
from core.tools import ToolBox
from core.wakeups import StatusPoller, WakeupHub
from gateway.metrics import Metrics
from gateway.upstream import Upstream
from gateway.webhooks import WebhookSender


@dataclass(slots=True)
class Replica:
    """The services of one replica, built once at start-up: Redis-backed stores, the
    wake-up hub, the upstream model, the tools, the metrics."""

    settings: Settings
    store: SessionStore
    jobs: JobQueue
    hub: WakeupHub
    poller: StatusPoller
    toolbox: ToolBox
    upstream: Upstream
    runner_id: str
    audit: AuditLog
    grants: Grants
    conversation_ids: ConversationIds
    taint: ConversationTaint
    handoffs: Handoffs
    idempotency: IdempotentRequests
    webhooks: WebhookSender | None = None
    metrics: Metrics = field(default_factory=Metrics)

    def check_redis(self) -> None:
        """Fail fast (503) while the wake-up connection says Redis is down."""
        if not self.hub.connected:
            raise RedisUnavailable("redis is unavailable; no approval could be stored")
