"""The action proposal an agent submits, and the approval record keel keeps for it."""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from typing import Any

import orjson
from pydantic import BaseModel, Field, field_validator

PENDING = "pending"
APPROVED = "approved"
DENIED = "denied"
TIMED_OUT = "timed_out"
AUTO_APPROVED = "auto_approved"
AUTO_DENIED = "auto_denied"
MAX_AMOUNT = 1e12  # USD: far above any real action, far below float trouble
MAX_TIMEOUT_S = 366 * 24 * 3600.0  # a year
STATUSES = (PENDING, APPROVED, DENIED, TIMED_OUT, AUTO_APPROVED, AUTO_DENIED)


class Proposal(BaseModel):
    """``{action, arguments, amount, risk_level, reason, requested_by}``."""

    model_config = {"extra": "forbid"}

    action: str = Field(min_length=1, max_length=200)
    arguments: dict[str, Any] = Field(default_factory=dict)
    # Bounded so a hostile proposal cannot dodge amount rules (-1e308) or never expire.
    amount: float | None = Field(default=None, ge=0, le=MAX_AMOUNT, allow_inf_nan=False)
    risk_level: str = "HIGH"
    reason: str = Field(default="", max_length=4000)
    requested_by: str = Field(default="", max_length=200)
    tenant: str = "default"
    timeout_s: float | None = Field(default=None, gt=0, le=MAX_TIMEOUT_S,
                                    allow_inf_nan=False)  # overrides [approvals] timeout_s
    idempotency_key: str | None = Field(default=None, max_length=200)

    @field_validator("risk_level")
    @classmethod
    def _upper(cls, v: str) -> str:
        return v.strip().upper()

    def arguments_hash(self) -> str:
        return hash_arguments(self.action, self.arguments)


def hash_arguments(action: str, arguments: dict[str, Any]) -> str:
    blob = orjson.dumps({"action": action, "arguments": arguments}, option=orjson.OPT_SORT_KEYS)
    return hashlib.sha256(blob).hexdigest()


@dataclass(frozen=True)
class Requester:
    """Who really asked for an approval: taken from the API key and the connection, never
    from the request body. ``claimed`` is what the caller said (kept, marked unverified)."""

    key_id: str
    agent: str | None
    ip: str
    claimed: str | None = None

    @property
    def label(self) -> str:
        """The ``requested_by`` value keel stores: ``agent:<name> key:<id>``."""
        return f"agent:{self.agent} key:{self.key_id}" if self.agent else f"key:{self.key_id}"

    def audit_detail(self) -> str:
        out = f"key={self.key_id} agent={self.agent or '-'} ip={self.ip}"
        if self.claimed:
            out += f" claimed_requested_by={self.claimed!r} (unverified)"
        return out


@dataclass(frozen=True)
class Approval:
    id: str
    workflow_id: str
    kind: str
    tenant: str
    action: str
    arguments: dict[str, Any]
    args_hash: str
    amount: float | None
    risk_level: str
    reason: str
    requested_by: str
    policy: str
    status: str
    outcome: str | None
    result: Any
    created_at: float
    expires_at: float
    decided_at: float | None
    decided_by: str | None
    decided_ip: str | None
    decided_via: str | None
    reminders_sent: int
    finished_at: float | None

    @property
    def done(self) -> bool:
        return self.finished_at is not None

    def public(self) -> dict[str, Any]:
        """The JSON view (no workflow id: that is the resume credential)."""
        return {
            "id": self.id, "object": "approval", "kind": self.kind, "tenant": self.tenant,
            "action": self.action, "arguments": self.arguments, "arguments_hash": self.args_hash,
            "amount": self.amount, "risk_level": self.risk_level, "reason": self.reason,
            "requested_by": self.requested_by, "policy": self.policy, "status": self.status,
            "outcome": self.outcome, "result": self.result, "created_at": self.created_at,
            "expires_at": self.expires_at, "decided_at": self.decided_at,
            "decided_by": self.decided_by, "decided_via": self.decided_via,
            "reminders_sent": self.reminders_sent, "done": self.done,
        }
