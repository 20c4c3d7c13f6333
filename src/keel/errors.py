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

    def __init__(self, message: str, *, param: str | None = None,
                 retry_after: float | None = None, **extra: Any) -> None:
        super().__init__(message)
        self.message = message
        self.param = param
        # seconds the client should wait before trying again: the gateway sends it as a
        # Retry-After header, which OpenAI's SDKs use for their backoff
        self.retry_after = retry_after
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


class JsonTooDeep(MalformedJSON):
    code = "json_too_deep"


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


# --- tool gateway and policies ---------------------------------------------------------


class ToolNotFound(NotFound):
    code = "tool_not_found"


class PolicyDenied(PermissionDenied):
    """A Cedar policy (or the default deny) refused a tool call."""

    code = "policy_denied"


class ApprovalRequired(PermissionDenied):
    """The call needs a human's approval and no approval workflow is configured."""

    code = "approval_required"


class InvalidPolicy(InvalidRequest):
    """Cedar text that does not parse or does not validate against the tool schema."""

    code = "invalid_policy"


class ToolFailed(UpstreamError):
    """The tool server failed or could not be reached."""

    code = "tool_failed"


# --- approvals -------------------------------------------------------------------------


class Conflict(KeelError):
    http_status = 409
    type = "invalid_request_error"
    code = "conflict"


class ApprovalAlreadyDecided(Conflict):
    """Someone else decided first (double click, two approvers): exactly one decision wins."""

    code = "approval_already_decided"


class ReferenceUsed(Conflict):
    code = "reference_used"


class ReferenceExpired(KeelError):
    http_status = 410
    type = "invalid_request_error"
    code = "reference_expired"


class InvalidSignature(AuthenticationError):
    """A webhook or Slack request whose signature or timestamp does not verify."""

    code = "invalid_signature"


# --- wallets and x402 payments ---------------------------------------------------------


class BudgetExceeded(PermissionDenied):
    """A paid call would go over a session, daily or wallet budget (refused before signing)."""

    code = "budget_exceeded"


class InsufficientFunds(BudgetExceeded):
    """The wallet's available balance does not cover the price (no approval can change that)."""

    code = "insufficient_funds"


class PayeeNotAllowed(PermissionDenied):
    code = "payee_not_allowed"


class EgressDenied(PermissionDenied):
    """A paid fetch aimed at a host agents may not reach (allow-list, private addresses)."""

    code = "egress_denied"


class SessionNotFound(NotFound):
    """A payment named a session keel never opened for this agent (agents cannot mint
    fresh budgets by inventing session ids)."""

    code = "session_not_found"


class SessionClosed(PermissionDenied):
    """The session was closed or expired: its budget is spent for good."""

    code = "session_closed"


class SessionLimit(RateLimited):
    """An agent key opened as many sessions today as ``wallets.agent_sessions_per_day``."""

    code = "session_limit"


class PaymentLoopGuard(RateLimited):
    """Too many paid calls per minute or per session: an agent stuck in a paying loop."""

    code = "payment_loop_guard"


class PaymentApprovalPending(KeelError):
    """Over budget, and an approval request was filed instead of refusing outright."""

    http_status = 202
    type = "approval_pending"
    code = "payment_approval_pending"


class PaymentRequirementsInvalid(UpstreamError):
    """A 402 answer keel cannot pay: malformed, unknown scheme/network/asset, or expiring."""

    code = "payment_requirements_invalid"


class PaymentFailed(UpstreamError):
    """The paid retry was refused or the settlement failed; the reservation was released."""

    code = "payment_failed"


class RagIndexNotFound(NotFound):
    """A request or command named a RAG index that was never ingested."""

    code = "rag_index_not_found"


class RagIndexEmpty(InvalidRequest):
    """The RAG index exists but holds no chunks."""

    code = "rag_index_empty"
