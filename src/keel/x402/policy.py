"""Cedar for payments: every payment is the action ``Action::"x402:pay"``.

When the tool gateway (and so the policy store) exists, keel asks Cedar before reserving any
payment, with the same principal (``Agent::"<tenant>/<agent>"``, its tenant, name and roles)
and the same fail-closed rules as tool calls: default deny, ``forbid`` wins, errors deny.
The context holds the payment (``payee``, ``amount_micros``, ``host``, ``port``, ``network``,
``resource``) plus
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

from yarl import URL

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
                   "host": {"type": "string"}, "port": {"type": "integer"},
                   "network": {"type": "string"}, "resource": {"type": "string"}},
    "required": ["payee", "amount_micros", "host", "port", "network", "resource"],
})


def policy_actions(settings: Settings) -> list[ToolSignature]:
    """The non-tool actions Cedar policies may name under these settings (for the gateway
    and for `keel policy validate|apply|schema|draft`)."""
    w = settings.wallets
    return [PAY_SIGNATURE] if w.enabled and w.cedar else []


def pay_arguments(intent: PaymentIntent) -> dict[str, Any]:
    """The Cedar context of a payment. ``host`` is the bare host name as the connection uses
    it (no port, no user info; for a paid tool, the tool server's name) and ``port`` is
    separate, so ``context.host == "api.example.com"`` cannot be sidestepped."""
    u = URL(intent.url)
    host = (u.host or "").lower()
    if u.scheme not in ("http", "https"):  # tool://server/name
        host = f"{u.scheme}:{host}"
    resource = str(u.with_user(None)) if u.user is not None else intent.url
    return {"payee": intent.payee, "amount_micros": intent.amount_micros, "host": host,
            "port": u.port or 0, "network": intent.network, "resource": resource}


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
