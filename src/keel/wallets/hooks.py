"""Ports the policy and approval capabilities plug into (no imports from them here).

With nothing configured, budgets are the only rule: an over-budget payment is refused with a
clear error. A :class:`PaymentAuthorizer` (e.g. Cedar) is asked before every reservation and
can only refuse more. A :class:`PaymentApprovals` hook turns an over-budget refusal into an
approval request; the agent gets ``202 payment_approval_pending`` with the request id.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol


@dataclass(frozen=True)
class PaymentIntent:
    """A payment keel is about to reserve and sign, as policies and approvers see it."""

    tenant: str
    agent: str
    session_id: str
    url: str
    method: str
    payee: str
    network: str
    asset: str
    amount_micros: int


@dataclass(frozen=True)
class AuthorizationDecision:
    allowed: bool
    reason: str = ""


@dataclass(frozen=True)
class ApprovalTicket:
    id: str
    url: str | None = None  # where a human decides, if the approver has a page


class PaymentAuthorizer(Protocol):
    async def authorize(self, intent: PaymentIntent) -> AuthorizationDecision: ...


class PaymentApprovals(Protocol):
    async def request(self, intent: PaymentIntent, reason: str) -> ApprovalTicket: ...
