"""The gateway's one error tree; `gateway.app` maps it to HTTP in one place.

    GatewayError                500 internal_error
    ├── InvalidRequest          400 invalid_request
    │   └── BodyTooLarge        413 body_too_large
    ├── SessionNotFound         404 session_not_found
    ├── DecisionConflict        409 decision_conflict
    ├── NoStream                409 no_stream
    ├── SessionExpired          410 session_expired
    ├── UpstreamError           502 upstream_error
    └── Unavailable             503 unavailable
        ├── RedisUnavailable    503 redis_unavailable
        └── Overloaded          503 overloaded

Every error body is `{"error": {"code": ..., "message": ...}}`.
"""

from __future__ import annotations


class GatewayError(Exception):
    """Base of every error the gateway reports to a client."""

    status_code = 500
    code = "internal_error"

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message

    def body(self) -> dict[str, dict[str, str]]:
        """The JSON error body."""
        return {"error": {"code": self.code, "message": self.message}}


class InvalidRequest(GatewayError):
    """The request is malformed or names something that does not fit."""

    status_code = 400
    code = "invalid_request"


class BodyTooLarge(InvalidRequest):
    """The request body is larger than the configured limit."""

    status_code = 413
    code = "body_too_large"


class SessionNotFound(GatewayError):
    """No approval session has this id (or it was cleaned up)."""

    status_code = 404
    code = "session_not_found"


class DecisionConflict(GatewayError):
    """The session was already decided differently, or is in a state that refuses this."""

    status_code = 409
    code = "decision_conflict"


class NoStream(GatewayError):
    """The session's request was not a held stream, so there is nothing to re-attach to."""

    status_code = 409
    code = "no_stream"


class SessionExpired(GatewayError):
    """The session's deadline passed before the decision."""

    status_code = 410
    code = "session_expired"


class UpstreamError(GatewayError):
    """The upstream model failed or answered something the gateway cannot use."""

    status_code = 502
    code = "upstream_error"


class Unavailable(GatewayError):
    """The gateway cannot take this request now; retry later."""

    status_code = 503
    code = "unavailable"


class RedisUnavailable(Unavailable):
    """Redis did not answer within its bound."""

    code = "redis_unavailable"


class Overloaded(Unavailable):
    """A configured bound (held streams, pending sessions) is reached."""

    code = "overloaded"
