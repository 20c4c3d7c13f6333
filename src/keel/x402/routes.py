"""HTTP surface: ``POST /v1/fetch`` (paid fetch for an agent) and ``GET /v1/wallet``."""

from __future__ import annotations

import asyncio
import base64
import re
from typing import TYPE_CHECKING, Any

import orjson
from fastapi import APIRouter
from starlette.requests import Request
from starlette.responses import Response

from keel.errors import InvalidRequest, WrongType
from keel.gateway.context import Principal
from keel.gateway.http import ORJSONResponse, read_body, require_admin
from keel.gateway.routes import authenticate
from keel.gateway.validation import check, parse_json, require
from keel.tools.ports import payment_headers
from keel.wallets.money import fmt_usd
from keel.x402.client import FetchRequest, FetchResult

if TYPE_CHECKING:
    from keel.gateway.services import Services
    from keel.x402.client import PaidFetcher


class PaymentRoutes:
    def __init__(self, svc: Services, fetcher: PaidFetcher) -> None:
        self.svc = svc
        self.fetcher = fetcher

    def router(self) -> APIRouter:
        r = APIRouter()
        r.add_api_route("/v1/fetch", self.fetch, methods=["POST"],
                        summary="Fetch a URL for an agent, paying x402 402s within budget")
        r.add_api_route("/v1/wallet", self.wallet, methods=["GET"],
                        summary="The calling agent's wallet and balances")
        r.add_api_route("/v1/admin/payments/{payment_id}/refund", self.refund,
                        methods=["POST"], summary="Book a payee's refund of a settled payment")
        return r

    async def _agent(self, request: Request) -> tuple[Principal, str]:
        p = await authenticate(self.svc, request)
        if not p.agent:
            raise InvalidRequest("this API key has no agent; wallets belong to agents: create "
                                 "a key with `keel keys create --tenant T --agent NAME`")
        return p, p.agent

    async def fetch(self, request: Request) -> Response:
        p, agent = await self._agent(request)
        body = parse_json(await read_body(request, self.svc.settings.server.max_body_bytes))
        req = FetchRequest(url=require(body, "url", str),
                           session_id=require(body, "session_id", str),
                           method=check(body, "method", str) or "GET",
                           headers=_headers(body.get("headers")), body=_body(body.get("body")))
        if isinstance(body.get("body"), dict | list):
            req.headers.setdefault("content-type", "application/json")
        result = await self.fetcher.fetch(p.tenant, agent, req)
        receipt = result.payment.as_dict() if result.payment is not None else None
        return ORJSONResponse(_render(result, receipt), headers=payment_headers(receipt))

    async def refund(self, request: Request, payment_id: str) -> Response:
        p = await authenticate(self.svc, request)
        require_admin(p.admin or not self.svc.settings.auth_required)
        raw = await read_body(request, self.svc.settings.server.max_body_bytes)
        body = parse_json(raw) if raw.strip() else {}
        memo = check(body, "memo", str) or ""
        wallets = self.fetcher.wallets
        out = await asyncio.to_thread(wallets.refund, p.tenant, payment_id, memo)
        return ORJSONResponse(out)

    async def wallet(self, request: Request) -> Response:
        p, agent = await self._agent(request)
        w = await self.svc.db.run(lambda c: self.fetcher.wallets.store.get(c, p.tenant, agent))
        balances = await asyncio.to_thread(self.fetcher.wallets.balance, w)
        return ORJSONResponse({"id": w.id, "tenant": w.tenant, "agent": w.agent,
                               "address": w.address, "external_signer": w.external,
                               "available_micros": balances.get("available", 0),
                               "held_micros": balances.get("held", 0),
                               "available": fmt_usd(balances.get("available", 0))})


# RFC 9110 token characters for a header name; values may not carry CR, LF or NUL
# (header injection, and the HTTP client refuses them with an exception).
_TOKEN = re.compile(r"[!#$%&'*+.^_`|~0-9A-Za-z-]+")
_BAD_VALUE = re.compile(r"[\r\n\x00]")


def _headers(raw: Any) -> dict[str, str]:
    if raw is None:
        return {}
    if not isinstance(raw, dict) or not all(isinstance(v, str) for v in raw.values()):
        raise WrongType("'headers' must be an object of string values", param="headers")
    for k, v in raw.items():
        if not _TOKEN.fullmatch(k):
            raise InvalidRequest(f"header name {k[:60]!r} is not a valid HTTP header name",
                                 param="headers")
        if _BAD_VALUE.search(v):
            raise InvalidRequest(f"header {k!r} contains CR, LF or NUL: send one line per "
                                 "header value", param="headers")
    return {str(k): v for k, v in raw.items()}


def _body(raw: Any) -> bytes | None:
    if raw is None:
        return None
    if isinstance(raw, str):
        return raw.encode()
    if isinstance(raw, dict | list):
        return orjson.dumps(raw)
    raise WrongType("'body' must be a string or a JSON object/array", param="body")


def _render(r: FetchResult, receipt: dict[str, Any] | None) -> dict[str, Any]:
    out: dict[str, Any] = {"status": r.status, "headers": r.headers}
    try:
        out["body"] = r.body.decode()
    except UnicodeDecodeError:
        out["body"] = base64.b64encode(r.body).decode()
        out["body_encoding"] = "base64"
    out["payment"] = receipt
    return out
