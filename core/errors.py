"""The gateway's one error tree; `gateway.app` maps it to HTTP in one place.

    GatewayError                500 internal_error
    ├── InvalidRequest          400 invalid_request
    │   ├── BodyTooLarge        413 body_too_large
    │   ├── UnsupportedMediaType 415 unsupported_media_type
    │   ├── InvalidHost         400 invalid_host
    │   ├── UnknownToolCall     400 unknown_tool_call
    │   └── InvalidArguments    400 invalid_arguments
    ├── Unauthorized            401 unauthorized
    ├── Forbidden               403 forbidden
    │   ├── SelfApproval        403 self_approval
    │   └── EditRefused         403 edit_refused
    ├── NotFound                404 not_found
    ├── MethodNotAllowed        405 method_not_allowed
    ├── SessionNotFound         404 session_not_found
    ├── DecisionConflict        409 decision_conflict
    │   ├── HashMismatch        409 hash_mismatch
    │   ├── WrongProtocol       409 wrong_protocol
    │   ├── HistoryMismatch     409 history_mismatch
    │   └── IdempotencyKeyReused 409 idempotency_key_reused
    ├── NoStream                409 no_stream
    ├── SessionExpired          410 session_expired
    ├── UpstreamError           502 upstream_error
    │   ├── UpstreamRejected    400 upstream_rejected
    │   └── UpstreamRateLimited 429 upstream_rate_limited
    └── Unavailable             503 unavailable
        ├── RedisUnavailable    503 redis_unavailable
        └── Overloaded          503 overloaded

Every error body is OpenAI's shape, `{"error": {"message", "type", "param", "code"}}`:
`code` is the stable code above, `type` OpenAI's kind of error for the status
(`invalid_request_error`, `authentication_error`, `permission_error`, `not_found_error`,
`conflict_error`, `rate_limit_error`, `server_error`), `param` the request field at fault
or null.
"""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel

_TYPES = {
    400: "invalid_request_error",
    401: "authentication_error",
    403: "permission_error",
    404: "not_found_error",
    409: "conflict_error",
    410: "invalid_request_error",
    413: "invalid_request_error",
    415: "invalid_request_error",
    429: "rate_limit_error",
}


class ErrorDetail(BaseModel):
    """What went wrong, as OpenAI describes an error."""

    message: str
    type: str
    """OpenAI's kind of error for the status (`invalid_request_error`, ...)."""
    param: str | None
    """The request field at fault, or null."""
    code: str
    """The stable code of the error's class (the tree above)."""


class ErrorBody(BaseModel):
    """Every error response's JSON body."""

    error: ErrorDetail


class GatewayError(Exception):
    """Base of every error the gateway reports to a client."""

    status_code = 500
    code = "internal_error"

    def __init__(self, message: str, param: str | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.param = param
        """The request field at fault, when one is."""

    @property
    def type(self) -> str:
        """OpenAI's kind of error for this status."""
        return _TYPES.get(self.status_code, "server_error")

    def body(self) -> dict[str, Any]:
        """The JSON error body, as OpenAI writes it."""
        detail = ErrorDetail(message=self.message, type=self.type, param=self.param, code=self.code)
        return ErrorBody(error=detail).model_dump()


class InvalidRequest(GatewayError):
    """The request is malformed or names something that does not fit."""

    status_code = 400
    code = "invalid_request"


class BodyTooLarge(InvalidRequest):
    """The request body is larger than the configured limit."""

    status_code = 413
    code = "body_too_large"


class UnsupportedMediaType(InvalidRequest):
    """A request body that is not declared `Content-Type: application/json`."""

    status_code = 415
    code = "unsupported_media_type"


class InvalidHost(InvalidRequest):
    """The `Host` header names a host this gateway does not serve (`allowed_hosts`)."""

    code = "invalid_host"


class UnknownToolCall(InvalidRequest):
    """A decision names a tool call id the session does not have."""

    code = "unknown_tool_call"


class InvalidArguments(InvalidRequest):
    """Edited arguments do not fit the tool's schema."""

    code = "invalid_arguments"


class Unauthorized(GatewayError):
    """No API key, or one the gateway does not know."""

    status_code = 401
    code = "unauthorized"


class Forbidden(GatewayError):
    """The key is known but its roles do not allow this."""

    status_code = 403
    code = "forbidden"


class SelfApproval(Forbidden):
    """The key that requested the calls may not decide them."""

    code = "self_approval"


class EditRefused(Forbidden):
    """The tool is not editable, or policy would deny the edited call."""

    code = "edit_refused"


class NotFound(GatewayError):
    """No route has this path (or no model this id)."""

    status_code = 404
    code = "not_found"


class MethodNotAllowed(GatewayError):
    """The route does not take this method."""

    status_code = 405
    code = "method_not_allowed"


class SessionNotFound(GatewayError):
    """No approval session has this id (or it was cleaned up)."""

    status_code = 404
    code = "session_not_found"


class DecisionConflict(GatewayError):
    """The session was already decided differently, or is in a state that refuses this."""

    status_code = 409
    code = "decision_conflict"


class HashMismatch(DecisionConflict):
    """The decision was made on arguments other than the call's (a stale or tampered hash)."""

    code = "hash_mismatch"


class WrongProtocol(DecisionConflict):
    """The first version's approve was asked to decide a session of the OpenAI protocol."""

    code = "wrong_protocol"


class HistoryMismatch(DecisionConflict):
    """A request's history changes a gated client call (its arguments, or a result for a call
    that was never released to the client)."""

    code = "history_mismatch"


class IdempotencyKeyReused(DecisionConflict):
    """The `Idempotency-Key` was sent before with a different request."""

    code = "idempotency_key_reused"


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


class UpstreamRejected(UpstreamError):
    """The upstream refused the request as invalid (its 4xx): the client's request is at fault."""

    status_code = 400
    code = "upstream_rejected"


class UpstreamRateLimited(UpstreamError):
    """The upstream answered 429: retry later, as against the upstream itself."""

    status_code = 429
    code = "upstream_rate_limited"


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
