"""Cedar for payments: every payment is the action ``Action::"x402:pay"``.

When the tool gateway (and so the policy store) exists, keel asks Cedar before reserving any
payment, with the same principal (``Agent::"<agent>"``, its tenant and roles) and the same
fail-closed rules as tool calls: default deny, ``forbid`` wins, errors deny. The context
holds the payment (``payee``, ``amount_micros``, ``host``, ``network``, ``resource``) plus
``context.now`` and ``context.session``. A permitting policy annotated
``@approval("required")`` sends the payment to a human first (when approvals are on).

```cedar
@id("pay-sandbox-under-5-cents")
permit(principal, action == Action::"x402:pay", resource)
when { context.payee == "0x1111..." && context.amount_micros <= 50000 };
```
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any
from urllib.parse import urlsplit

from keel.gateway.context import Principal
from keel.policy.schema import ToolSignature
from keel.wallets.hooks import AuthorizationDecision, PaymentIntent

if TYPE_CHECKING:
    from keel.config import Settings
    from keel.tools.gateway import ToolGateway

PAY_ACTION = "x402:pay"
PAY_SIGNATURE = ToolSignature(PAY_ACTION, "x402", {
    "type": "object",
    "properties": {"payee": {"type": "string"}, "amount_micros": {"type": "integer"},
                   "host": {"type": "string"}, "network": {"type": "string"},
                   "resource": {"type": "string"}},
    "required": ["payee", "amount_micros", "host", "network", "resource"],
})


def policy_actions(settings: Settings) -> list[ToolSignature]:
    """The non-tool actions Cedar policies may name under these settings (for the gateway
    and for `keel policy validate|apply|schema|draft`)."""
    w = settings.wallets
    return [PAY_SIGNATURE] if w.enabled and w.cedar else []


def pay_arguments(intent: PaymentIntent) -> dict[str, Any]:
    parts = urlsplit(intent.url)
    host = parts.netloc if parts.scheme in ("http", "https") else f"{parts.scheme}:{parts.netloc}"
    return {"payee": intent.payee, "amount_micros": intent.amount_micros,
            "host": host.lower(), "network": intent.network, "resource": intent.url}


class CedarPayments:
    """:class:`keel.wallets.hooks.PaymentAuthorizer` on the tool gateway's policies; each
    decision is written to the tool decision log like a tool call."""

    def __init__(self, gateway: ToolGateway) -> None:
        self.gateway = gateway

    async def authorize(self, intent: PaymentIntent) -> AuthorizationDecision:
        who = Principal(key_id="-", tenant=intent.tenant, agent=intent.agent)
        d = await self.gateway.decide(who, PAY_ACTION, pay_arguments(intent), intent.session_id)
        if d.outcome == "deny":
            ids = ", ".join(d.policy_ids)
            return AuthorizationDecision(False, f"{d.reason}" + (f" ({ids})" if ids else ""))
        return AuthorizationDecision(True, d.reason, approval=d.outcome == "approval")
