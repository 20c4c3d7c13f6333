"""Ports the policy and approval capabilities plug into (no imports from them here).

With nothing configured, budgets are the only rule: an over-budget payment is refused with a
clear error. A :class:`PaymentAuthorizer` (Cedar, :mod:`keel.x402.policy`) is asked before
every reservation and can only refuse more (or ask for a human). A :class:`PaymentApprovals`
hook (:mod:`keel.approvals.payment_hook`) turns an over-budget refusal into an approval
request: the agent gets ``202 payment_approval_pending`` with the request id, and once a
human approves, the identical payment goes through once, above the budget (never above the
wallet's balance, the payee allow-list or the loop guard).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal, Protocol


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
    # a digest of what is being bought (the tool's arguments, or method and body), so an
    # approval granted for one request never pays for another at the same price
    request_digest: str = ""


@dataclass(frozen=True)
class AuthorizationDecision:
    allowed: bool
    reason: str = ""
    approval: bool = False  # allowed only once a human approves (Cedar @approval)


@dataclass(frozen=True)
class ApprovalTicket:
    id: str
    url: str | None = None  # where a human decides, if the approver has a page
    # "pending": ask again later; "approved": go ahead (once); "rejected": refused
    status: Literal["pending", "approved", "rejected"] = "pending"
    message: str = ""


class PaymentAuthorizer(Protocol):
    async def authorize(self, intent: PaymentIntent) -> AuthorizationDecision: ...


class PaymentApprovals(Protocol):
    async def request(self, intent: PaymentIntent, reason: str, kind: str) -> ApprovalTicket:
        """File (or find) the approval for this payment; ``kind`` is ``"budget"`` (over a
        budget or the per-call cap) or ``"policy"`` (a Cedar ``@approval`` policy)."""
        ...

    async def restore(self, ticket: ApprovalTicket) -> None:
        """An approved payment did not go through after all: keep the approval usable."""
        ...
