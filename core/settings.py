"""The one reader of the environment: every process builds a `Settings` and passes it on.

Variables use the prefix `GATEWAY_`; nested groups use `__`
(`GATEWAY_OFFLINE__TOKEN_DELAY_S=0.01`). A `.env` file in the working
directory is read too.
"""

from __future__ import annotations

from enum import StrEnum
from pathlib import Path
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, SecretStr, field_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

OPENAI_FIELDS = (
    "audio",
    "frequency_penalty",
    "logit_bias",
    "logprobs",
    "max_completion_tokens",
    "max_tokens",
    "metadata",
    "modalities",
    "parallel_tool_calls",
    "prediction",
    "presence_penalty",
    "prompt_cache_key",
    "reasoning_effort",
    "response_format",
    "safety_identifier",
    "seed",
    "service_tier",
    "stop",
    "store",
    "temperature",
    "tool_choice",
    "top_logprobs",
    "top_p",
    "user",
    "verbosity",
    "web_search_options",
)
"""The request fields of OpenAI's Chat Completions that the gateway passes on as they are."""
LOG_LEVELS = ("debug", "info", "warning", "error", "critical")


class PolicyMode(StrEnum):
    """What the gateway does when the model asks for a tool."""

    AUTO = "auto"
    """Run without asking anyone."""
    ASK = "ask"
    """Hold the call until a human decides."""
    DENY = "deny"
    """Never run; the model is told the call was denied."""


class OfflineModelSettings(BaseModel):
    """The built-in stand-in for an LLM (`offline-model` command)."""

    model_config = ConfigDict(use_attribute_docstrings=True)  # docstrings describe fields

    host: str = "127.0.0.1"
    """Offline model's address (`--host` overrides)."""
    port: int = 8001
    """Offline model's port (`--port` overrides)."""
    token_delay_s: float = Field(default=0.0, ge=0.0, description="pause between streamed deltas")
    reply_words: int = Field(default=12, ge=1, description="length of the default reply")


class WorkerSettings(BaseModel):
    """The tool executor (`gateway-worker` command)."""

    model_config = ConfigDict(use_attribute_docstrings=True)

    name: str = ""
    """Consumer name in the group; empty means hostname-pid."""
    concurrency: int = Field(default=8, ge=1)
    """Calls one worker runs at once."""
    tool_timeout_s: float = Field(default=30.0, gt=0)
    """Default per-call time limit."""
    max_result_bytes: int = Field(default=64 * 1024, ge=256)
    """Results are truncated past this."""
    block_ms: int = Field(default=2000, ge=10)
    """How long one read of the job stream blocks."""
    shutdown_grace_s: float = Field(default=10.0, ge=0)
    """On SIGTERM, in-flight calls get this long."""
    claim_idle_ms: int = Field(
        default=15_000, ge=100, description="a job idle this long is a dead worker's"
    )
    max_attempts: int = Field(
        default=3, ge=1, description="runs of an idempotent call whose workers died"
    )
    metrics_host: str = "127.0.0.1"
    """Address of the worker's `/healthz` and `/metrics` port (0.0.0.0 in a container)."""
    metrics_port: int = Field(
        default=9101, ge=0, le=65535, description="GET /healthz and /metrics; 0: no port"
    )


class WebhookTarget(BaseModel):
    """One receiver of signed approval events."""

    model_config = ConfigDict(use_attribute_docstrings=True)

    url: str
    """Where the events are POSTed."""
    secret: SecretStr
    """HMAC-SHA256 key; receivers verify `X-Gateway-Signature` with it."""
    events: list[str] = Field(default_factory=lambda: ["approval.requested", "approval.decided"])
    """The event types sent to it (docs/webhooks.md)."""


class ApiKey(BaseModel):
    """One API key, stored as the SHA-256 hex of the key, never the key itself."""

    model_config = ConfigDict(use_attribute_docstrings=True)

    sha256: str = Field(pattern=r"^[0-9a-f]{64}$")
    """SHA-256 hex of the key."""
    name: str
    """Who holds the key: it is the actor in the audit log."""
    tenant: str
    """The tenant whose sessions the key opens and sees."""
    roles: list[str] = Field(default_factory=lambda: ["requester"])
    """`requester`, `approver`, `admin` (docs/authentication.md)."""


class Settings(BaseSettings):
    """Configuration shared by the gateway, the worker and the offline model."""

    model_config = SettingsConfigDict(
        env_prefix="GATEWAY_",
        env_nested_delimiter="__",
        env_file=".env",
        extra="ignore",
        use_attribute_docstrings=True,
    )

    # Redis
    redis_url: str = "redis://127.0.0.1:6379/0"
    """Redis holding sessions, wake-ups and the job stream (on a cluster: any one node)."""
    key_prefix: str = "ag"
    """Prefix of every Redis key (several deployments can share a Redis)."""
    redis_timeout_s: float = Field(
        default=2.0, gt=0, description="bound on each Redis call (connect, and each reply)"
    )
    redis_max_connections: int = Field(
        default=64, ge=4, description="Redis connections per process; when all are busy, calls wait"
    )
    redis_pool_wait_s: float = Field(
        default=10.0, gt=0, description="how long a call waits for a free connection"
    )
    redis_cluster: bool = Field(
        default=False, description="redis_url is one node of a Redis Cluster (7.0 or later)"
    )
    """Clients follow the cluster's slot map, and wake-ups travel over sharded pub/sub
    (`SSUBSCRIBE`/`SPUBLISH`, one connection per master)."""

    # Upstream model; the default points at the offline model's default address.
    upstream_base_url: str = "http://127.0.0.1:8001/v1"
    """OpenAI-compatible upstream (default: the offline model)."""
    upstream_api_key: SecretStr = SecretStr("offline")
    """API key sent upstream."""
    upstream_model: str = "offline-model"
    """Model used when a request names none."""
    upstream_timeout_s: float = Field(default=120.0, gt=0)
    """Bound on connecting upstream and on each silence of its stream."""
    models: list[str] = Field(default_factory=list)
    """The model ids `GET /v1/models` lists; empty: the upstream's own list."""
    upstream_tool_choice: Literal["auto", "omit"] = "auto"
    """`auto`: send `tool_choice: "auto"` when tools are offered and the client chose none
    (llama.cpp's server takes a missing one as `none`); `omit`: send none."""
    upstream_assistant_content: Literal["null", "empty"] = "null"
    """How an assistant message with tool calls and no text says so upstream: `null` (as
    OpenAI does) or `empty` (`""`, for servers that refuse null, such as llama.cpp's)."""
    upstream_stream_tools: Literal["auto", "always", "never"] = "auto"
    """`auto`: stream, and if the upstream answers a streamed request with tools with an
    empty body or a 400/422/501, ask it whole from then on; `always`; `never`: ask whole
    whenever tools are offered."""
    upstream_fields: list[str] = Field(default_factory=lambda: list(OPENAI_FIELDS))
    """The Chat Completions request fields passed on to the upstream (OpenAI's by default)."""
    upstream_adapter: Literal["wire", "langchain"] = "wire"
    """`wire`: aiohttp + orjson on the OpenAI wire format; `langchain`: langchain-openai."""

    # Tools and policy
    tools: str = "examples.tools:TOOLS"
    """Server-side tools, `module:attribute`."""
    tool_policy: dict[str, PolicyMode] = Field(default_factory=dict)
    """Tool name -> `auto`, `ask` or `deny`, for tools the policy file does not list."""
    policy_file: Path | None = None
    """A TOML policy file (see docs/policy.md); its rules override `tool_policy`."""

    # Authentication, audit and webhooks
    api_keys: list[ApiKey] = Field(default_factory=list)
    """With none configured the gateway runs open (and says so in its log and /readyz)."""
    allow_self_approval: bool = False
    """Whether the key that requested a call may decide it (only with api_keys)."""
    grant_max_ttl_s: int = Field(default=3600, ge=1, description="the longest a grant may last")
    audit_maxlen: int = Field(
        default=1_000_000, ge=1000, description="audit stream length per tenant (MAXLEN ~)"
    )
    audit_retention_s: int = Field(
        default=30 * 24 * 3600, ge=60, description="audit entries older than this are trimmed"
    )
    webhooks: list[WebhookTarget] = Field(default_factory=list)
    """Receivers of signed approval events (docs/webhooks.md)."""
    webhook_max_attempts: int = Field(default=8, ge=1)
    """Attempts per webhook delivery, the first one included."""

    # Approvals
    approval_timeout_s: float = Field(default=600.0, gt=0)
    """Deadline of an approval session."""
    heartbeat_interval_s: float = Field(default=15.0, gt=0)
    """SSE heartbeat interval on held streams (a comment line, which no client makes an event)."""
    approval_notice_as_content: bool = False
    """Also say a pending approval as a content delta, for clients that read ahead to the
    first content (a request's `X-Approval-Notice: content|chunk` overrides it)."""
    reread_interval_s: float = Field(default=2.0, gt=0)
    """How often a replica re-reads the status of every session it holds (and tool-result
    waits re-read), so a lost wake-up costs at most this."""
    tool_result_timeout_s: float = Field(
        default=120.0, gt=0, description="how long a replica waits for workers' results"
    )
    lease_s: float = Field(default=10.0, gt=0, description="a dead replica's runs wait this long")
    log_flush_ms: float = Field(default=20.0, gt=0, description="batch window of run-log writes")
    session_retention_s: int = Field(default=24 * 3600, ge=60)
    """How long finished sessions stay readable."""
    idempotency_retention_s: int = Field(
        default=24 * 3600, ge=60, description="how long an Idempotency-Key's request is kept"
    )

    # Limits
    max_body_bytes: int = Field(default=1024 * 1024, ge=1024)
    """Request body limit (413 past it)."""
    max_messages: int = Field(default=256, ge=1)
    """Messages per request."""
    max_tool_rounds: int = Field(default=8, ge=1)
    """Tool rounds per request."""
    max_held_streams: int = Field(default=10_000, ge=1)
    """Streams one replica holds at once (503 past it)."""
    max_pending_sessions: int = Field(default=10_000, ge=1)
    """Pending sessions in the deployment (503 past it)."""
    max_pending_sessions_per_tenant: int = Field(
        default=1_000, ge=1, description="one tenant's share of the pending sessions"
    )
    max_tool_calls_per_turn: int = Field(
        default=16, ge=1, description="calls past this in one model turn are denied"
    )
    max_upstream_turn_bytes: int = Field(
        default=8 * 1024 * 1024, ge=64 * 1024, description="bound on one upstream answer"
    )

    # Gateway HTTP server
    host: str = "127.0.0.1"
    """Where `gateway` listens (`--host` overrides); without API keys only loopback."""
    port: int = 8000
    """Port `gateway` listens on (`--port` overrides)."""
    shutdown_grace_s: int = Field(default=5, ge=0, description="bound on a replica's shutdown")
    listen_backlog: int = Field(default=8192, ge=1)
    """Connections the kernel queues for `gateway` before it accepts them (capped by
    `net.core.somaxconn`): after a replica dies, its clients re-attach to the others at
    once, and a queue that overflows resets their connections."""
    allow_open_bind: bool = False
    """Let a gateway without `api_keys` (open mode) listen on a non-loopback address."""
    cors_origins: list[str] = Field(default_factory=list)
    """Origins whose pages may call the API from a browser (CORS); empty: none. `["*"]` is any
    origin: use it only with API keys (an open gateway would let any page approve calls)."""
    allowed_hosts: list[str] = Field(default_factory=list)
    """`Host` values served (`gateway.example.com`, `*.example.com`, `127.0.0.1:8000`);
    others get 400. Empty: any host, or in open mode only loopback ones."""

    # Logs of every process (docs/logging.md)
    log_format: Literal["json", "console"] = Field(
        default="json", description="one JSON object per line, or lines for people (`make run`)"
    )
    log_level: str = Field(default="info", description="debug, info, warning, error or critical")
    log_arguments: bool = Field(
        default=False, description="debug only: puts tool-call arguments in the logs"
    )

    offline: OfflineModelSettings = Field(default_factory=OfflineModelSettings)
    worker: WorkerSettings = Field(default_factory=WorkerSettings)

    @field_validator("log_level")
    @classmethod
    def _known_level(cls, level: str) -> str:
        if level.lower() not in LOG_LEVELS:
            raise ValueError(f"log_level: one of {', '.join(LOG_LEVELS)}")
        return level.lower()
