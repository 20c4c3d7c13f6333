"""HTTP surface: ``POST /v1/fetch`` (paid fetch for an agent) and ``GET /v1/wallet``."""

from __future__ import annotations

import asyncio
import base64
import re
from decimal import Decimal, InvalidOperation
from typing import TYPE_CHECKING, Any

import orjson
from fastapi import APIRouter
from starlette.requests import Request
from starlette.responses import Response

from keel.errors import InvalidRequest, PermissionDenied, WrongType
from keel.gateway.context import Principal
from keel.gateway.http import ORJSONResponse, read_body, require_admin
from keel.gateway.routes import authenticate
from keel.gateway.validation import check, parse_json, require
from keel.tools.ports import payment_headers
from keel.wallets import sessions
from keel.wallets.money import fmt_usd, usd_to_micros
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
        r.add_api_route("/v1/wallet/sessions", self.open_session, methods=["POST"],
                        summary="Open a budget session for an agent (operator, orchestrator, "
                                "or the agent itself within its daily quota)")
        r.add_api_route("/v1/wallet/sessions", self.list_sessions, methods=["GET"],
                        summary="Recent sessions (an agent: its own; operators: the tenant's)")
        r.add_api_route("/v1/wallet/sessions/{session_id}", self.get_session, methods=["GET"],
                        summary="A session's budget, spend and state")
        r.add_api_route("/v1/wallet/sessions/{session_id}", self.close_session,
                        methods=["DELETE"], summary="Close a session: its budget ends")
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

    async def _who(self, request: Request) -> tuple[Principal, bool]:
        """The caller, and whether it is an operator (an admin key, auth off, or a tenant key
        without an agent: the orchestrator) rather than an agent."""
        p = await authenticate(self.svc, request)
        return p, p.admin or not self.svc.settings.auth_required or not p.agent

    async def open_session(self, request: Request) -> Response:
        p, operator = await self._who(request)
        raw = await read_body(request, 65536, None)
        body = parse_json(raw) if raw.strip() else {}
        unknown = sorted(set(body) - {"agent", "tenant", "budget_usd", "max_calls", "ttl_s",
                                      "id"})
        if unknown:
            raise InvalidRequest(f"unknown field(s) {', '.join(unknown)}; a session takes "
                                 "agent, budget_usd, max_calls, ttl_s (operators: tenant, id)",
                                 param=unknown[0])
        agent = check(body, "agent", str)
        tenant = p.tenant
        if operator:
            if not agent:
                raise InvalidRequest("'agent' is required: the agent the session is for",
                                     param="agent")
            if p.admin or not self.svc.settings.auth_required:
                tenant = check(body, "tenant", str) or p.tenant
        else:
            if agent is not None and agent != p.agent:
                raise PermissionDenied("an agent key opens sessions only for its own agent")
            if "tenant" in body:
                raise InvalidRequest("an agent key opens sessions in its own tenant: omit "
                                     "'tenant'", param="tenant")
            agent = p.agent
        assert agent is not None
        budget = _usd(body.get("budget_usd"))
        ttl = body.get("ttl_s")
        if ttl is not None and (isinstance(ttl, bool) or not isinstance(ttl, int | float)):
            raise WrongType("'ttl_s' must be a number of seconds", param="ttl_s")
        opened_by = f"key:{p.key_id}" if p.key_id else "anonymous"
        s = await asyncio.to_thread(
            self.fetcher.wallets.open_session, tenant, agent, opened_by=opened_by,
            by_agent=not operator, budget_micros=budget,
            max_calls=check(body, "max_calls", int), ttl_s=ttl, session_id=check(body, "id", str))
        return ORJSONResponse(s.as_dict(), status_code=201,
                              headers={"location": f"/v1/wallet/sessions/{s.id}"})

    async def list_sessions(self, request: Request) -> Response:
        p, operator = await self._who(request)
        agent = request.query_params.get("agent") if operator else p.agent
        try:
            limit = min(max(int(request.query_params.get("limit", 100)), 1), 1000)
        except ValueError:
            raise InvalidRequest("'limit' must be an integer", param="limit") from None
        rows = await self.svc.db.run(lambda c: sessions.recent(c, p.tenant, agent, limit))
        return ORJSONResponse({"object": "list", "data": rows})

    async def get_session(self, request: Request, session_id: str) -> Response:
        p, operator = await self._who(request)
        out = await asyncio.to_thread(self.fetcher.wallets.session_info, p.tenant, session_id,
                                      None if operator else p.agent)
        return ORJSONResponse(out)

    async def close_session(self, request: Request, session_id: str) -> Response:
        p, operator = await self._who(request)
        s = await asyncio.to_thread(self.fetcher.wallets.close_session, p.tenant, session_id,
                                    f"key:{p.key_id}", None if operator else p.agent)
        return ORJSONResponse(s.as_dict())

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


def _usd(raw: Any) -> int | None:
    """``budget_usd`` as micro-USD: a string ("2.00") or a JSON number, exact to 1e-6."""
    if raw is None:
        return None
    if isinstance(raw, bool) or not isinstance(raw, str | int | float):
        raise WrongType("'budget_usd' must be a decimal string like \"2.00\"",
                        param="budget_usd")
    try:
        # a JSON number is spelt out in plain digits (5e-05 -> 0.00005); a string must
        # already be plain decimal ASCII (usd_to_micros refuses "1e2", "٣", "1_000")
        text = format(Decimal(repr(raw)), "f") if isinstance(raw, float) else str(raw)
        if not Decimal(text.strip().removeprefix("$")).is_finite():
            raise ValueError("not a finite amount")
        return usd_to_micros(text)
    except (InvalidOperation, ValueError) as exc:
        raise InvalidRequest(f"'budget_usd' {raw!r} is not an amount of dollars with at most "
                             f"6 decimals: {exc}", param="budget_usd") from None


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
