"""Payments that need a human: over a budget (or the per-call cap), or a Cedar
``@approval("required")`` payment policy.

The payment becomes an approval request (action ``x402:pay``, the payee, amount, resource and
session as arguments) keyed by a hash of tenant, agent, session, resource, payee, amount and
why. The agent gets ``202 payment_approval_pending``; repeating the identical call after a
human approved goes through once (:class:`keel.approvals.oneshot.OneShotApprovals`).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from keel.approvals.models import Proposal
from keel.approvals.oneshot import OneShotApprovals, request_key
from keel.wallets.hooks import ApprovalTicket, PaymentIntent
from keel.wallets.money import fmt_usd

if TYPE_CHECKING:
    from keel.approvals.service import ApprovalsService


def payment_key(intent: PaymentIntent, kind: str) -> str:
    return request_key("payment", {
        "t": intent.tenant, "a": intent.agent, "s": intent.session_id, "url": intent.url,
        "payee": intent.payee.lower(), "amount": intent.amount_micros,
        "network": intent.network, "request": intent.request_digest, "kind": kind})


class PaymentApprovalHook:
    """:class:`keel.wallets.hooks.PaymentApprovals` on the approvals capability."""

    def __init__(self, service: ApprovalsService, wait_s: float = 0.0) -> None:
        self.service = service
        self.approvals = OneShotApprovals(service, wait_s, consumer="wallets")

    async def request(self, intent: PaymentIntent, reason: str, kind: str) -> ApprovalTicket:
        key = payment_key(intent, kind)

        def proposal() -> Proposal:
            return Proposal(
                action="x402:pay", risk_level="HIGH", requested_by=intent.agent,
                tenant=intent.tenant, idempotency_key=key, amount=intent.amount_micros / 1e6,
                reason=f"{intent.agent} wants to pay {fmt_usd(intent.amount_micros)} to "
                       f"{intent.payee} for {intent.url}: {reason}",
                arguments={"payee": intent.payee, "amount_micros": intent.amount_micros,
                           "amount": fmt_usd(intent.amount_micros), "resource": intent.url,
                           "network": intent.network, "session_id": intent.session_id,
                           "request_digest": intent.request_digest, "why": kind})

        outcome = await self.approvals.ask(intent.tenant, key, proposal,
                                           "repeat the same paid call once it is approved")
        url = None
        if outcome.status == "pending" and outcome.approval_id:
            url = f"/v1/approvals/{outcome.approval_id}"
        return ApprovalTicket(outcome.approval_id or "", url, outcome.status, outcome.message)

    async def restore(self, ticket: ApprovalTicket) -> None:
        await self.approvals.restore(ticket.id)
