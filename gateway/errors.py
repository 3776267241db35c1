"""The gateway's one error hierarchy.

Every failure a client can see is a `GatewayError`. Each subclass knows its HTTP status and
its type name in both client dialects; `render_anthropic` and `render_openai` turn any error
into that API's JSON error body. Handlers raise, the web layer renders in one place. Messages
must never carry tokens, API keys or prompt text: callers build them from field names and
upstream status lines only.
"""

from __future__ import annotations

import math
from typing import Any, ClassVar


class GatewayError(Exception):
    """Base class: a failure with a status code and a client-safe message."""

    status: ClassVar[int] = 500
    anthropic_type: ClassVar[str] = "api_error"
    openai_type: ClassVar[str] = "server_error"
    openai_code: ClassVar[str | None] = None
    # False when only a person can fix it (a key, the config, the accounts): then the answer
    # says `x-should-retry: false`, which the official SDKs (and Claude Code) obey instead of
    # retrying for minutes.
    retryable: ClassVar[bool] = True

    def __init__(
        self,
        message: str,
        *,
        param: str | None = None,
        retry_after: float | None = None,
    ) -> None:
        super().__init__(message)
        self.message = message
        self.param = param
        self.retry_after = retry_after

    def headers(self) -> dict[str, str]:
        headers: dict[str, str] = {}
        if self.retry_after is not None:
            headers["retry-after"] = str(max(1, math.ceil(self.retry_after)))
        if not self.retryable:
            headers["x-should-retry"] = "false"
        return headers


class InvalidRequest(GatewayError):
    status = 400
    anthropic_type = "invalid_request_error"
    openai_type = "invalid_request_error"


class UnknownModel(InvalidRequest):
    status = 404
    anthropic_type = "not_found_error"
    openai_code = "model_not_found"


class NotFound(GatewayError):
    status = 404
    anthropic_type = "not_found_error"
    openai_type = "invalid_request_error"


class MethodNotAllowed(GatewayError):
    status = 405
    anthropic_type = "invalid_request_error"
    openai_type = "invalid_request_error"


class RequestTimeout(GatewayError):
    """The client did not finish sending its request in time; the connection is closed."""

    status = 408
    anthropic_type = "invalid_request_error"
    openai_type = "invalid_request_error"
    openai_code = "request_timeout"

    def headers(self) -> dict[str, str]:
        return {**super().headers(), "connection": "close"}


class UnsupportedMediaType(GatewayError):
    status = 415
    anthropic_type = "invalid_request_error"
    openai_type = "invalid_request_error"
    openai_code = "unsupported_media_type"


class MisdirectedRequest(GatewayError):
    """The Host header names a site this gateway does not serve (DNS rebinding, mostly)."""

    status = 421
    anthropic_type = "invalid_request_error"
    openai_type = "invalid_request_error"
    openai_code = "misdirected_request"
    retryable = False


class Unauthenticated(GatewayError):
    status = 401
    anthropic_type = "authentication_error"
    openai_type = "invalid_request_error"
    openai_code = "invalid_api_key"
    retryable = False


class PermissionDenied(GatewayError):
    status = 403
    anthropic_type = "permission_error"
    openai_type = "invalid_request_error"


class PayloadTooLarge(GatewayError):
    status = 413
    anthropic_type = "request_too_large"
    openai_type = "invalid_request_error"


class RateLimited(GatewayError):
    status = 429
    anthropic_type = "rate_limit_error"
    openai_type = "rate_limit_error"
    openai_code = "rate_limit_exceeded"


class UpstreamError(GatewayError):
    """The upstream failed in a way retries and failover could not hide."""

    status = 500
    anthropic_type = "api_error"
    openai_type = "server_error"


class UpstreamAuthError(UpstreamError):
    """Every usable account was rejected by the upstream (expired or revoked credentials)."""

    status = 401
    anthropic_type = "authentication_error"
    openai_type = "invalid_request_error"
    openai_code = "upstream_authentication_failed"


class UpstreamInvalidRequest(UpstreamError):
    """The upstream refused the request itself (400): retrying elsewhere would not help."""

    status = 400
    anthropic_type = "invalid_request_error"
    openai_type = "invalid_request_error"


class Overloaded(UpstreamError):
    status = 529
    anthropic_type = "overloaded_error"
    openai_type = "server_error"
    openai_code = "overloaded"


class ClientVersionRefused(UpstreamError):
    """The upstream refused the gateway's client identity (its version gate): an operator's
    fix (upstream.user_agent), the same on every account."""

    status = 502
    anthropic_type = "api_error"
    openai_type = "server_error"
    openai_code = "upstream_client_outdated"
    retryable = False


class UpstreamTimeout(UpstreamError):
    status = 504
    anthropic_type = "api_error"
    openai_type = "timeout"
    openai_code = "upstream_timeout"


class NoAccounts(GatewayError):
    """No account can serve: none configured, or all are invalid (or, transiently, none is
    ready yet)."""

    status = 503
    anthropic_type = "api_error"
    openai_type = "server_error"
    openai_code = "no_accounts"


class NoUsableAccounts(NoAccounts):
    """None configured, or every one invalid or disabled: until someone adds one."""

    retryable = False


def _status_for_openai(err: GatewayError) -> int:
    # OpenAI clients do not know 529; they retry 503 the way Anthropic clients retry 529.
    return 503 if err.status == 529 else err.status


def anthropic_status(err: GatewayError) -> int:
    return err.status


def openai_status(err: GatewayError) -> int:
    return _status_for_openai(err)


def render_anthropic(err: GatewayError) -> dict[str, Any]:
    return {"type": "error", "error": {"type": err.anthropic_type, "message": err.message}}


def render_openai(err: GatewayError) -> dict[str, Any]:
    return {
        "error": {
            "message": err.message,
            "type": err.openai_type,
            "param": err.param,
            "code": err.openai_code,
        }
    }


# google.rpc.Code names by HTTP status, as the Gemini API reports them.
_GOOGLE_STATUS = {
    400: "INVALID_ARGUMENT", 401: "UNAUTHENTICATED", 403: "PERMISSION_DENIED",
    404: "NOT_FOUND", 405: "UNIMPLEMENTED", 408: "DEADLINE_EXCEEDED",
    409: "ABORTED", 413: "INVALID_ARGUMENT", 415: "INVALID_ARGUMENT",
    421: "PERMISSION_DENIED", 429: "RESOURCE_EXHAUSTED", 499: "CANCELLED",
    500: "INTERNAL", 501: "UNIMPLEMENTED", 502: "UNAVAILABLE", 503: "UNAVAILABLE",
    504: "DEADLINE_EXCEEDED",
}


def gemini_status(err: GatewayError) -> int:
    # Google's clients know 503 for an overloaded backend, not Anthropic's 529.
    return _status_for_openai(err)


def render_gemini(err: GatewayError) -> dict[str, Any]:
    """The Gemini API's error body: `{"error": {"code", "message", "status"}}`."""
    status = gemini_status(err)
    return {"error": {"code": status, "message": err.message,
                      "status": _GOOGLE_STATUS.get(status, "UNKNOWN")}}
