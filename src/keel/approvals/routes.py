"""HTTP surface: ``/v1/approvals`` (API keys), the decision page ``/approvals/r/{ref}``
(GET shows, POST with a CSRF token decides) and the Slack interactivity endpoint."""

from __future__ import annotations

import hmac
import secrets
import time
from typing import TYPE_CHECKING, Any
from urllib.parse import parse_qs

import orjson
from fastapi import APIRouter
from jinja2 import Environment, PackageLoader, select_autoescape
from pydantic import ValidationError
from starlette.requests import Request
from starlette.responses import HTMLResponse, Response

from keel.approvals import slack, store
from keel.approvals.engine import Decider
from keel.approvals.models import STATUSES, Proposal, Requester
from keel.approvals.oneshot import RESERVED_KEY_PREFIXES, reserved_key
from keel.errors import InvalidRequest, KeelError, NotFound, PermissionDenied
from keel.gateway.http import ORJSONResponse, client_ip, read_body, require_admin
from keel.gateway.params import choice_param, int_param
from keel.gateway.routes import authenticate
from keel.gateway.validation import parse_json

if TYPE_CHECKING:
    from keel.approvals.service import ApprovalsService
    from keel.gateway.services import Services

CSRF_COOKIE = "keel_approval_csrf"
PAGE_HEADERS = {"cache-control": "no-store", "x-frame-options": "DENY",
                "referrer-policy": "no-referrer",
                "content-security-policy": "default-src 'self'; style-src 'unsafe-inline'"}


class ApprovalRoutes:
    def __init__(self, svc: Services, approvals: ApprovalsService) -> None:
        self.svc = svc
        self.engine = approvals.engine
        self.env = Environment(loader=PackageLoader("keel", "web/templates"),
                               autoescape=select_autoescape(["html"]))
        self.env.filters["ts"] = lambda t: time.strftime("%Y-%m-%d %H:%M:%S UTC",
                                                         time.gmtime(t or 0))

    def router(self) -> APIRouter:
        r = APIRouter()
        r.add_api_route("/v1/approvals", self.create, methods=["POST"],
                        summary="Request approval for an action")
        r.add_api_route("/v1/approvals", self.list, methods=["GET"], summary="List approvals")
        r.add_api_route("/v1/approvals/{approval_id}", self.get, methods=["GET"],
                        summary="Approval status (?wait=S long-polls until it finished)")
        r.add_api_route("/v1/approvals/{approval_id}/decision", self.decide_api,
                        methods=["POST"], summary="Approve or deny (admin key)")
        r.add_api_route("/v1/approvals/{approval_id}/audit", self.audit, methods=["GET"],
                        summary="Audit trail of one approval (admin key)")
        r.add_api_route("/approvals/r/{ref}", self.page, methods=["GET"],
                        include_in_schema=False)
        r.add_api_route("/approvals/r/{ref}", self.decide_link, methods=["POST"],
                        include_in_schema=False)
        r.add_api_route("/approvals/slack/interactivity", self.slack, methods=["POST"],
                        include_in_schema=False)
        return r

    # -- API -----------------------------------------------------------------------------

    async def create(self, request: Request) -> Response:
        p = await authenticate(self.svc, request)
        body = parse_json(await read_body(request, 65536, None))
        if not isinstance(body, dict):
            raise InvalidRequest("the body must be a JSON object (an action proposal)")
        # requested_by is never taken from the caller: the key (and the connection) say who
        # asked; a claimed value is only kept, marked unverified, in the audit detail.
        claimed = body.pop("requested_by", None)
        if claimed is not None and not isinstance(claimed, str):
            raise InvalidRequest("requested_by must be a string (it is informational: keel "
                                 "records the API key that made the request)",
                                 param="requested_by")
        requester = Requester(key_id=p.key_id, agent=p.agent, ip=self._ip(request),
                              claimed=claimed[:200] if claimed else None)
        if "tenant" in body and not p.admin and body["tenant"] != p.tenant:
            raise PermissionDenied("only admin keys may request approvals for another tenant")
        body.setdefault("tenant", p.tenant)
        try:
            proposal = Proposal.model_validate(body)
        except ValidationError as exc:
            e = exc.errors()[0]
            where = ".".join(str(x) for x in e["loc"]) or "body"
            raise InvalidRequest(f"{where}: {e['msg']}", param=where) from None
        if reserved_key(proposal.idempotency_key):
            raise InvalidRequest(
                "idempotency keys starting with "
                f"{' or '.join(repr(k) for k in RESERVED_KEY_PREFIXES)} are reserved for the "
                "approvals keel files itself (held tool calls and payments)",
                param="idempotency_key")
        handle = await self.engine.request(proposal, requester)
        return ORJSONResponse(handle.approval.public(), status_code=201)

    async def list(self, request: Request) -> Response:
        p = await authenticate(self.svc, request)
        q = request.query_params
        status = choice_param(q, "status", STATUSES)
        limit = int_param(q, "limit", 100, 1, 1000)
        f = store.ListFilter(status=status, action=q.get("action") or None, limit=limit,
                             tenant=(q.get("tenant") or None) if p.admin else p.tenant)
        rows = await self.engine.list(f)
        return ORJSONResponse({"object": "list", "data": [a.public() for a in rows]})

    async def get(self, request: Request, approval_id: str) -> Response:
        p = await authenticate(self.svc, request)
        raw = request.query_params.get("wait")
        wait = 0.0
        if raw is not None:
            try:
                wait = float(raw)
            except ValueError:
                raise InvalidRequest("wait must be a number of seconds", param="wait") from None
            if not 0 <= wait <= self.engine.cfg.max_wait_s:
                raise InvalidRequest(f"wait must be between 0 and {self.engine.cfg.max_wait_s} "
                                     "seconds ([approvals] max_wait_s)", param="wait")
        a = await self.engine.get(approval_id)
        if not p.admin and a.tenant != p.tenant:
            raise NotFound(f"no approval with id {approval_id!r}")
        if wait > 0 and not a.done:
            a = await self.engine.wait(approval_id, wait)
        return ORJSONResponse(a.public())

    async def decide_api(self, request: Request, approval_id: str) -> Response:
        p = await authenticate(self.svc, request)
        require_admin(p.admin or not self.svc.settings.auth_required)
        body = parse_json(await read_body(request, 65536, None))
        if not isinstance(body, dict) or body.get("decision") not in ("approve", "deny"):
            raise InvalidRequest("send {\"decision\": \"approve\"} or {\"decision\": \"deny\"}",
                                 param="decision")
        note = body.get("note")
        for k in ("note", "error", "cause"):
            if body.get(k) is not None and not isinstance(body[k], str):
                raise InvalidRequest(f"{k} must be a string", param=k)
        who = Decider(actor=f"key:{p.key_id}", via="api", ip=self._ip(request))
        a = await self.engine.decide(body["decision"], who, approval_id=approval_id,
                                     note=note,
                                     output=body.get("output"), error=body.get("error"),
                                     cause=body.get("cause"))
        return ORJSONResponse(a.public())

    async def audit(self, request: Request, approval_id: str) -> Response:
        p = await authenticate(self.svc, request)
        require_admin(p.admin or not self.svc.settings.auth_required)
        await self.engine.get(approval_id)
        rows: list[dict[str, Any]] = await self.engine.db.run(
            lambda c: store.audit_rows(c, approval_id))
        return ORJSONResponse({"object": "list", "data": rows})

    # -- the decision page ------------------------------------------------------------------

    def _ip(self, request: Request) -> str:
        return client_ip(request, self.svc.trusted_proxies)

    def _render(self, status: int, **ctx: Any) -> HTMLResponse:
        html = self.env.get_template("approval_decide.html").render(**ctx)
        return HTMLResponse(html, status_code=status, headers=PAGE_HEADERS)

    async def page(self, request: Request, ref: str) -> Response:
        """Shows the proposal and two buttons. Never decides: link unfurlers, mail scanners
        and prefetchers issue GETs."""
        info = await self.engine.db.run(lambda c: store.lookup_ref(c, ref))
        if info is None:
            return self._render(404, error="This approval link is unknown.", a=None)
        a = await self.engine.get(info["approval_id"])
        error = None
        if info["used_at"] is not None:
            error = "This link was already used."
        elif info["expires_at"] <= time.time():
            error = "This link has expired."
        token = request.cookies.get(CSRF_COOKIE) or secrets.token_urlsafe(24)
        resp = self._render(200, a=a, error=error, csrf=token,
                            can_decide=error is None and a.status == "pending")
        resp.set_cookie(CSRF_COOKIE, token, httponly=True, samesite="strict",
                        path="/approvals/r", secure=request.url.scheme == "https")
        return resp

    async def decide_link(self, request: Request, ref: str) -> Response:
        form = parse_qs((await read_body(request, 16384, None)).decode(errors="replace"))
        token = (form.get("csrf") or [""])[0]
        cookie = request.cookies.get(CSRF_COOKIE, "")
        decision = (form.get("decision") or [""])[0]
        name = (form.get("name") or [""])[0].strip()[:100]
        if not cookie or not hmac.compare_digest(token, cookie):
            await self.engine.db.run(lambda c: store.add_audit(
                c, None, "decision", accepted=False, ip=self._ip(request), channel="link",
                detail="missing or wrong CSRF token"))
            return self._render(403, a=None, error="The form token is missing or wrong: "
                                "open the approval link again and use its buttons.")
        who = Decider(actor=f"link:{name or 'anonymous'}", via="link", ip=self._ip(request))
        try:
            a = await self.engine.decide(decision, who, ref=ref)
        except KeelError as exc:
            return self._render(exc.http_status, a=None, error=exc.message)
        return self._render(200, a=a, error=None, done=True)

    # -- Slack ----------------------------------------------------------------------------------

    async def slack(self, request: Request) -> Response:
        secret = self.engine.cfg.slack_signing_secret
        if secret is None:  # not configured: the endpoint does not exist (no 500)
            raise NotFound("Slack interactivity is not configured on this gateway (set "
                           "[approvals] slack_signing_secret)")
        body = await read_body(request, 65536, None)
        try:
            slack.verify(secret.get_secret_value(),
                         request.headers.get("x-slack-request-timestamp"),
                         request.headers.get("x-slack-signature"), body)
        except KeelError as exc:
            why = exc.message
            await self.engine.db.run(lambda c: store.add_audit(
                c, None, "decision", accepted=False, ip=self._ip(request), channel="slack",
                detail=why))
            raise
        click = slack.parse_click(body)
        who = Decider(actor=click.user, via="slack", ip=self._ip(request))
        a = await self.engine.decide(click.decision, who, ref=click.ref)
        text = f"{a.action}: {a.status} by {click.user}"
        return Response(orjson.dumps({"replace_original": True, "text": text}),
                        media_type="application/json")
