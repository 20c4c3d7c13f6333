"""One error hierarchy for all of keel.

Every error carries a stable machine-readable ``code``, an OpenAI-style ``type`` and the
HTTP status the gateway answers with. Messages say what to fix; they never contain
secrets or stack traces.
"""

from __future__ import annotations

from typing import Any, ClassVar


class KeelError(Exception):
    """Root of every error keel raises on purpose."""

    http_status: ClassVar[int] = 500
    type: ClassVar[str] = "server_error"
    code: ClassVar[str] = "internal_error"

    def __init__(self, message: str, *, param: str | None = None, **extra: Any) -> None:
        super().__init__(message)
        self.message = message
        self.param = param
        self.extra = extra

    def to_dict(self) -> dict[str, Any]:
        err: dict[str, Any] = {"type": self.type, "code": self.code, "message": self.message}
        err["param"] = self.param
        err.update(self.extra)
        return {"error": err}


# --- client errors (4xx) -------------------------------------------------------------


class InvalidRequest(KeelError):
    http_status = 400
    type = "invalid_request_error"
    code = "invalid_request"


class MalformedJSON(InvalidRequest):
    code = "malformed_json"


class MissingField(InvalidRequest):
    code = "missing_field"


class WrongType(InvalidRequest):
    code = "wrong_type"


class AuthenticationError(KeelError):
    http_status = 401
    type = "authentication_error"
    code = "invalid_api_key"


class PermissionDenied(KeelError):
    http_status = 403
    type = "permission_error"
    code = "forbidden"


class NotFound(KeelError):
    http_status = 404
    type = "invalid_request_error"
    code = "not_found"


class UnknownModel(NotFound):
    code = "model_not_found"


class PayloadTooLarge(KeelError):
    http_status = 413
    type = "invalid_request_error"
    code = "payload_too_large"


class UnsupportedMediaType(KeelError):
    http_status = 415
    type = "invalid_request_error"
    code = "unsupported_media_type"


class ContextLengthExceeded(InvalidRequest):
    code = "context_length_exceeded"


# --- configuration and setup -----------------------------------------------------------


class ConfigError(KeelError):
    """Settings are invalid or reference something that does not exist."""

    code = "config_error"


class ModelFileError(KeelError):
    """A model file is missing or fails its checksum."""

    http_status = 503
    code = "model_file_error"


# --- upstream / server side ------------------------------------------------------------


class UpstreamError(KeelError):
    """The model provider failed or answered with an error."""

    http_status = 502
    type = "api_error"
    code = "upstream_error"


class UpstreamTimeout(UpstreamError):
    http_status = 504
    code = "upstream_timeout"


class StorageError(KeelError):
    code = "storage_error"


class UpstreamRejected(KeelError):
    """The upstream refused the request as invalid (its 4xx), relayed to the client."""

    http_status = 400
    type = "invalid_request_error"
    code = "upstream_rejected"


class RateLimited(KeelError):
    http_status = 429
    type = "rate_limit_error"
    code = "rate_limited"


class PromptBlocked(PermissionDenied):
    """The prompt-injection firewall refused the request."""

    code = "prompt_blocked"


class ClientBanned(PermissionDenied):
    """The client tripped the firewall too often and is banned for a while."""

    code = "client_banned"
