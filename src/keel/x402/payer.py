"""Paying one x402 offer for an agent, whatever carried the 402 (HTTP or an MCP tool result).

``prepare``: choose the option keel can pay -> payee / per-call cap / Cedar -> atomic
reservation -> signature with the agent's wallet. Nothing is reserved when a check fails,
and a failed signature releases the hold. The caller then sends the signed payload its own
way (a ``PAYMENT-SIGNATURE`` header, or ``_meta["x402/payment"]`` of an MCP call) and reports
the outcome with :meth:`Payer.settled` or :meth:`Payer.failed`.
"""

from __future__ import annotations

import hashlib
import logging
import time
from dataclasses import dataclass
from typing import Any

from x402 import x402Client
from x402.mechanisms.evm.exact import ExactEvmClientScheme
from x402.schemas import PaymentPayload, PaymentRequired, SettleResponse

from keel.errors import PaymentFailed
from keel.wallets.hooks import PaymentIntent
from keel.wallets.money import fmt_usd
from keel.wallets.service import Reservation, WalletService
from keel.x402.requirements import choose

log = logging.getLogger("keel.x402")


@dataclass
class Receipt:
    payment_id: str
    amount_micros: int
    payee: str
    network: str
    transaction: str
    payer: str | None

    def as_dict(self) -> dict[str, Any]:
        """What agents see (``payment`` in JSON answers, ``_meta["keel/payment"]``)."""
        return {"id": self.payment_id, "amount_micros": self.amount_micros,
                "amount": fmt_usd(self.amount_micros), "payee": self.payee,
                "network": self.network, "transaction": self.transaction, "payer": self.payer}


def happened(settle: SettleResponse | None, succeeded: bool) -> bool:
    """Did the payment happen? A successful settlement is a fact whatever the answer's
    status; without a settlement receipt, a successful answer counts as paid."""
    return (settle is not None and settle.success) or (succeeded and settle is None)


@dataclass(frozen=True)
class Signed:
    """A reserved and signed payment, waiting for the paid retry's outcome."""

    hold: Reservation
    payload: PaymentPayload

    @property
    def authorization(self) -> dict[str, Any]:
        p = self.payload.payload
        auth = p.get("authorization", {}) if isinstance(p, dict) else {}
        return auth if isinstance(auth, dict) else {}


def digest(*parts: bytes) -> str:
    """A short digest of the request a payment is for (see ``PaymentIntent``)."""
    h = hashlib.sha256()
    for part in parts:
        h.update(len(part).to_bytes(8, "big"))
        h.update(part)
    return h.hexdigest()[:32]


class Payer:
    def __init__(self, wallets: WalletService) -> None:
        self.wallets = wallets
        self.cfg = wallets.settings.x402
        self._clients: dict[str, x402Client] = {}

    async def prepare(self, tenant: str, agent: str, session_id: str, resource: str,
                      method: str, required: PaymentRequired, host: str, *,
                      request_digest: str = "") -> Signed:
        """Check, reserve and sign; raises (with nothing held) when any step refuses."""
        wallet = await self.wallets.db.run(lambda c: self.wallets.store.get(c, tenant, agent))
        try:
            offer = choose(required, self.cfg, host)
        except Exception as exc:
            await self.unpayable(tenant, agent, session_id, resource, method, exc)
            raise
        intent = PaymentIntent(tenant=tenant, agent=agent, session_id=session_id,
                               url=resource, method=method, payee=offer.payee,
                               network=offer.chosen.network, asset=offer.chosen.asset,
                               amount_micros=offer.micros, request_digest=request_digest)
        valid_before = time.time() + offer.chosen.max_timeout_seconds
        hold = await self.wallets.reserve(wallet, intent, valid_before)
        try:
            client = self._clients.get(wallet.id)
            if client is None:
                client = self._client(await self.wallets.signer(wallet))
                self._clients[wallet.id] = client
            one = PaymentRequired(x402_version=2, error=None, resource=required.resource,
                                  accepts=[offer.chosen], extensions=required.extensions)
            payload = await client.create_payment_payload(one)
            if not isinstance(payload, PaymentPayload):
                raise TypeError("the SDK produced an x402 v1 payload")
        except Exception as exc:
            await self.wallets.release(hold, f"signing failed: {exc}")
            raise PaymentFailed(f"signing the payment failed: {exc}; nothing was charged") \
                from None
        return Signed(hold, payload)

    async def unpayable(self, tenant: str, agent: str, session_id: str, resource: str,
                        method: str, error: Exception) -> None:
        """Audit a 402 keel could not pay (malformed terms, nothing payable)."""
        await self.wallets.audit("unpayable", PaymentIntent(
            tenant, agent, session_id, resource, method, "", "", "", 0), error=str(error))

    @staticmethod
    def unknown_outcome(signed: Signed, where: str, cause: str) -> PaymentFailed:
        """The paid request failed after it may have reached the server: the hold stays
        until the signed authorization can no longer settle (the sweeper releases it)."""
        hold = signed.hold
        log.warning("payment %s: outcome unknown (%s); hold kept until %s", hold.id, cause,
                    time.strftime("%H:%M:%S", time.localtime(hold.expires_at)))
        return PaymentFailed(
            f"the paid request to {where} failed after signing ({cause}); the outcome is "
            "unknown, so the amount stays reserved until the signed authorization expires "
            "and is then released", payment_id=hold.id)

    def _client(self, signer: Any) -> x402Client:
        c = x402Client()
        scheme = ExactEvmClientScheme(signer)
        for network in self.cfg.networks:
            c.register(network, scheme)  # type: ignore[arg-type]
        c.set_spend_controls(False)  # keel's budgets are the spend controls
        return c

    async def settled(self, signed: Signed, settle: SettleResponse | None,
                      status: int | str) -> Receipt:
        """The paid retry succeeded: book the settlement and return the receipt."""
        tx = settle.transaction if settle is not None else "unconfirmed"
        payer = settle.payer if settle is not None else None
        auth = signed.authorization
        await self.wallets.settle(signed.hold, tx, {
            "transaction": tx, "payer": payer, "status": status,
            "nonce": auth.get("nonce"), "valid_before": auth.get("validBefore")})
        i = signed.hold.intent
        return Receipt(signed.hold.id, i.amount_micros, i.payee, i.network, tx, payer)

    async def failed(self, signed: Signed, reason: str) -> None:
        """The payment definitely did not happen: release the hold."""
        await self.wallets.release(signed.hold, reason)
