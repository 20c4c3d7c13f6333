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
from collections.abc import Mapping
from dataclasses import dataclass, field
from urllib.parse import urlsplit

import aiohttp
from x402.http.utils import decode_payment_response_header, encode_payment_signature_header
from x402.schemas import SettleResponse
from yarl import URL

from keel.errors import InvalidRequest, PaymentFailed, UpstreamError, UpstreamTimeout
from keel.wallets.hooks import PaymentIntent
from keel.wallets.service import WalletService
from keel.x402.egress import EgressPolicy, GuardedResolver, refusal
from keel.x402.payer import Payer, Receipt, Signed, digest, happened
from keel.x402.requirements import (
    PAYMENT_RESPONSE,
    PAYMENT_SIGNATURE,
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
        self.payer = Payer(wallets)
        self.egress = EgressPolicy(self.cfg.hosts, self.cfg.private_hosts)
        self._session: aiohttp.ClientSession | None = None

    def _http(self) -> aiohttp.ClientSession:
        if self._session is None or self._session.closed:
            self._session = aiohttp.ClientSession(
                connector=aiohttp.TCPConnector(resolver=GuardedResolver(self.egress)),
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
            denied = refusal(exc)
            if denied is not None:
                raise denied from None
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
        self.egress.check_url(req.url)
        await self.wallets.admit_session(PaymentIntent(
            tenant, agent, req.session_id, req.url, req.method, "", "", "", 0))
        first = await self._send(req, {}, paid=False)
        if first.status != 402:
            return FetchResult(first.status, first.headers, first.body)
        host = _host(req.url)
        try:
            required = parse_payment_required(first.headers, host)
        except Exception as exc:
            await self.payer.unpayable(tenant, agent, req.session_id, req.url, req.method, exc)
            raise
        signed = await self.payer.prepare(
            tenant, agent, req.session_id, req.url, req.method, required, host,
            request_digest=digest(req.method.encode(), req.body or b""))
        header = encode_payment_signature_header(signed.payload)
        try:
            resp = await self._send(req, {"PAYMENT-SIGNATURE": header}, paid=True)
        except _Uncertain as exc:
            raise self.payer.unknown_outcome(signed, host, str(exc)) from None
        except BaseException as exc:  # not sent at all, or cancelled before sending
            if not isinstance(exc, asyncio.CancelledError):
                await self.payer.failed(signed, f"not sent: {exc}")
            raise
        return await self._outcome(req, signed, resp)

    async def _outcome(self, req: FetchRequest, signed: Signed, resp: _Response) -> FetchResult:
        settle = _settle_response(resp.headers)
        if happened(settle, resp.status < 400):
            receipt = await self.payer.settled(signed, settle, resp.status)
            return FetchResult(resp.status, resp.headers, resp.body, receipt)
        reason = _refusal_reason(resp, settle)
        await self.payer.failed(signed, reason)
        if resp.status == 402:
            raise PaymentFailed(f"{_host(req.url)} refused the payment: {reason}; nothing "
                                "was charged", payment_id=signed.hold.id)
        # the server failed after verifying: x402 servers do not settle error responses
        return FetchResult(resp.status, resp.headers, resp.body)


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
    try:  # parsed the way aiohttp will (yarl): ports, IDNA and NFKC problems are 400s
        u = URL(req.url)
        port = u.port
    except ValueError as exc:
        raise InvalidRequest(f"'url' is not a valid URL: {exc}", param="url") from None
    if u.scheme not in ("http", "https") or not u.host or port is None:
        raise InvalidRequest("'url' must be an absolute http(s) URL", param="url")
    if u.user is not None or u.password is not None:
        raise InvalidRequest("'url' must not carry credentials (user:password@host); send "
                             "them in 'headers' instead: URLs end up in logs", param="url")
    if not req.session_id.strip():
        raise InvalidRequest("'session_id' must not be empty: budgets are per session",
                             param="session_id")
    if req.method.upper() not in ("GET", "POST", "PUT", "PATCH", "DELETE", "HEAD"):
        raise InvalidRequest(f"method {req.method!r} is not supported", param="method")
    req.method = req.method.upper()
