"""The x402 client: fetch a URL for an agent and follow a 402 within the agent's budget.

``request -> 402 -> parse PAYMENT-REQUIRED -> choose an option -> payee/cap/policy checks ->
atomic reservation -> sign (x402 SDK, agent's wallet) -> retry with PAYMENT-SIGNATURE ->
PAYMENT-RESPONSE receipt -> settle`` in the ledger, or release the hold when the payment
definitely did not happen. When the outcome is unknown (the connection died after the signed
request was sent) the hold stays until the signed authorization can no longer settle
(``validBefore`` + grace) and the sweeper releases it: budgets are never under-counted.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import urlsplit

import aiohttp
from x402 import x402Client
from x402.http.utils import decode_payment_response_header, encode_payment_signature_header
from x402.mechanisms.evm.exact import ExactEvmClientScheme
from x402.schemas import PaymentRequired, SettleResponse

from keel.errors import InvalidRequest, PaymentFailed, UpstreamError, UpstreamTimeout
from keel.wallets.hooks import PaymentIntent
from keel.wallets.service import Reservation, WalletService
from keel.wallets.store import Wallet
from keel.x402.requirements import (
    PAYMENT_RESPONSE,
    PAYMENT_SIGNATURE,
    choose,
    parse_payment_required,
)

log = logging.getLogger("keel.x402")
_HOP = frozenset({"host", "content-length", "connection", "transfer-encoding", "keep-alive",
                  "upgrade", "te", "trailer", PAYMENT_SIGNATURE, "x-payment"})


@dataclass
class FetchRequest:
    url: str
    session_id: str
    method: str = "GET"
    headers: dict[str, str] = field(default_factory=dict)
    body: bytes | None = None


@dataclass
class Receipt:
    payment_id: str
    amount_micros: int
    payee: str
    network: str
    transaction: str
    payer: str | None


@dataclass
class FetchResult:
    status: int
    headers: dict[str, str]
    body: bytes
    payment: Receipt | None = None


@dataclass
class _Response:
    status: int
    headers: dict[str, str]  # lower-cased names
    body: bytes


class _Uncertain(Exception):
    """The signed request may have reached the server: its outcome is unknown."""


class PaidFetcher:
    def __init__(self, wallets: WalletService) -> None:
        self.wallets = wallets
        self.cfg = wallets.settings.x402
        self._session: aiohttp.ClientSession | None = None
        self._clients: dict[str, x402Client] = {}

    def _http(self) -> aiohttp.ClientSession:
        if self._session is None or self._session.closed:
            self._session = aiohttp.ClientSession(
                timeout=aiohttp.ClientTimeout(total=self.cfg.timeout_s),
                auto_decompress=True)
        return self._session

    async def aclose(self) -> None:
        if self._session is not None:
            await self._session.close()
            self._session = None

    async def _send(self, req: FetchRequest, extra: Mapping[str, str], *,
                    paid: bool) -> _Response:
        headers = {k: v for k, v in req.headers.items() if k.lower() not in _HOP}
        headers.update(extra)
        try:
            async with self._http().request(req.method, req.url, headers=headers,
                                            data=req.body, allow_redirects=False) as r:
                body = await r.content.read(self.cfg.max_response_bytes + 1)
                if len(body) > self.cfg.max_response_bytes:
                    raise UpstreamError(f"{req.url} answered more than "
                                        f"{self.cfg.max_response_bytes} bytes "
                                        "(wallets.x402.max_response_bytes)")
                return _Response(r.status, {k.lower(): v for k, v in r.headers.items()}, body)
        except aiohttp.ClientConnectorError as exc:  # never connected: nothing was sent
            raise UpstreamError(f"cannot reach {_host(req.url)}: {exc.strerror or exc}") \
                from None
        except (TimeoutError, aiohttp.ClientError) as exc:
            if paid:
                raise _Uncertain(str(exc) or type(exc).__name__) from None
            if isinstance(exc, TimeoutError):
                raise UpstreamTimeout(f"{_host(req.url)} did not answer within "
                                      f"{self.cfg.timeout_s} s") from None
            raise UpstreamError(f"{_host(req.url)}: {exc}") from None

    async def fetch(self, tenant: str, agent: str, req: FetchRequest) -> FetchResult:
        _check_request(req)
        first = await self._send(req, {}, paid=False)
        if first.status != 402:
            return FetchResult(first.status, first.headers, first.body)
        host = _host(req.url)
        wallet = await self.wallets.db.run(lambda c: self.wallets.store.get(c, tenant, agent))
        try:
            required = parse_payment_required(first.headers, host)
            offer = choose(required, self.cfg, host)
        except Exception as exc:
            await self.wallets.audit("unpayable", _intent(tenant, agent, req),
                                     error=str(exc))
            raise
        intent = PaymentIntent(tenant=tenant, agent=agent, session_id=req.session_id,
                               url=req.url, method=req.method, payee=offer.payee,
                               network=offer.chosen.network, asset=offer.chosen.asset,
                               amount_micros=offer.micros)
        valid_before = time.time() + offer.chosen.max_timeout_seconds
        hold = await self.wallets.reserve(wallet, intent, valid_before)
        return await self._pay(req, wallet, hold, offer.required, offer.chosen)

    async def _pay(self, req: FetchRequest, wallet: Wallet, hold: Reservation,
                   required: PaymentRequired, chosen: Any) -> FetchResult:
        try:
            client = await self._client(wallet)
            one = PaymentRequired(x402_version=2, error=None, resource=required.resource,
                                  accepts=[chosen], extensions=required.extensions)
            payload = await client.create_payment_payload(one)
            header = encode_payment_signature_header(payload)
        except Exception as exc:
            await self.wallets.release(hold, f"signing failed: {exc}")
            raise PaymentFailed(f"signing the payment failed: {exc}; nothing was charged") \
                from None
        auth = payload.payload.get("authorization", {}) if isinstance(payload.payload, dict) \
            else {}
        try:
            resp = await self._send(req, {"PAYMENT-SIGNATURE": header}, paid=True)
        except _Uncertain as exc:
            log.warning("payment %s: outcome unknown (%s); hold kept until %s", hold.id, exc,
                        time.strftime("%H:%M:%S", time.localtime(hold.expires_at)))
            raise PaymentFailed(
                f"the paid request to {_host(req.url)} failed after signing ({exc}); the "
                "outcome is unknown, so the amount stays reserved until the signed "
                "authorization expires and is then released", payment_id=hold.id) from None
        except BaseException as exc:  # not sent at all, or cancelled before sending
            if not isinstance(exc, asyncio.CancelledError):
                await self.wallets.release(hold, f"not sent: {exc}")
            raise
        return await self._outcome(req, hold, resp, auth)

    async def _outcome(self, req: FetchRequest, hold: Reservation, resp: _Response,
                       auth: dict[str, Any]) -> FetchResult:
        settle = _settle_response(resp.headers)
        signed = {"nonce": auth.get("nonce"), "valid_before": auth.get("validBefore")}
        if resp.status < 400 and (settle is None or settle.success):
            tx = settle.transaction if settle is not None else "unconfirmed"
            receipt = {"transaction": tx, "payer": settle.payer if settle else None,
                       "status": resp.status, **signed}
            await self.wallets.settle(hold, tx, receipt)
            i = hold.intent
            return FetchResult(resp.status, resp.headers, resp.body,
                               Receipt(hold.id, i.amount_micros, i.payee, i.network, tx,
                                       settle.payer if settle else None))
        reason = _refusal_reason(resp, settle)
        await self.wallets.release(hold, reason)
        if resp.status == 402:
            raise PaymentFailed(f"{_host(req.url)} refused the payment: {reason}; nothing "
                                "was charged", payment_id=hold.id)
        # the server failed after verifying: x402 servers do not settle error responses
        return FetchResult(resp.status, resp.headers, resp.body)

    async def _client(self, wallet: Wallet) -> x402Client:
        c = self._clients.get(wallet.id)
        if c is None:
            signer = await self.wallets.signer(wallet)
            c = x402Client()
            scheme = ExactEvmClientScheme(signer)
            for network in self.cfg.networks:
                c.register(network, scheme)  # type: ignore[arg-type]
            c.set_spend_controls(False)  # keel's budgets are the spend controls
            self._clients[wallet.id] = c
        return c


def _intent(tenant: str, agent: str, req: FetchRequest) -> PaymentIntent:
    return PaymentIntent(tenant, agent, req.session_id, req.url, req.method, "", "", "", 0)


def _settle_response(headers: Mapping[str, str]) -> SettleResponse | None:
    raw = headers.get(PAYMENT_RESPONSE)
    if not raw:
        return None
    try:
        return decode_payment_response_header(raw)
    except Exception:
        return SettleResponse(success=False, error_reason="malformed PAYMENT-RESPONSE header",
                              transaction="", network="unknown")


def _refusal_reason(resp: _Response, settle: SettleResponse | None) -> str:
    if settle is not None and not settle.success:
        return settle.error_message or settle.error_reason or "settlement failed"
    if resp.status == 402:
        try:
            again = parse_payment_required(resp.headers, "server")
            return again.error or "payment not accepted"
        except Exception:
            return "payment not accepted (no readable PAYMENT-REQUIRED)"
    return f"the resource answered {resp.status} after the payment was verified; not settled"


def _host(url: str) -> str:
    return urlsplit(url).netloc or url[:100]


def _check_request(req: FetchRequest) -> None:
    parts = urlsplit(req.url)
    if parts.scheme not in ("http", "https") or not parts.netloc:
        raise InvalidRequest("'url' must be an absolute http(s) URL", param="url")
    if not req.session_id.strip():
        raise InvalidRequest("'session_id' must not be empty: budgets are per session",
                             param="session_id")
    if req.method.upper() not in ("GET", "POST", "PUT", "PATCH", "DELETE", "HEAD"):
        raise InvalidRequest(f"method {req.method!r} is not supported", param="method")
    req.method = req.method.upper()
