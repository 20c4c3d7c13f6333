"""The console's own pages (sign-in, overview with spend, the request log, request detail)
and its assembly: the shell (``keel.web.shell``) plus the pages each enabled capability
contributes.
"""

from __future__ import annotations

import secrets
import time
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any
from urllib.parse import urlencode

import orjson
from fastapi import APIRouter
from markupsafe import Markup
from starlette.requests import Request
from starlette.responses import RedirectResponse, Response

from keel.errors import AuthenticationError, PayloadTooLarge
from keel.gateway.context import Principal
from keel.gateway.params import MAX_HOURS, MAX_PAGE, choice_param, float_param, int_param
from keel.gateway.services import Services
from keel.metering.request_log import (
    LogFilter,
    get_request,
    query_requests,
    spend_by_hour,
    spend_summary,
)
from keel.web.shell import (
    COOKIE,
    CROSS_SITE,
    SESSION_TTL_S,
    ConsoleShell,
    NavItem,
    bar_chart,
    same_origin,
    session_key,
)

if TYPE_CHECKING:
    from keel.capability import PageFactory

class ConsoleRoutes:
    """Sign-in, overview and the request log; then every enabled capability's pages."""

    def __init__(self, svc: Services, pages: Sequence[PageFactory] = ()) -> None:
        self.svc = svc
        self.shell = ConsoleShell(svc)
        self.pages = [factory(self.shell) for factory in pages]
        self.shell.nav.extend([NavItem("/console", "Overview"),
                               NavItem("/console/requests", "Requests")])
        self.shell.nav.extend(p.nav for p in self.pages if p.nav is not None)
        self.principal = self.shell.principal
        self.render = self.shell.render
        self.form = self.shell.form

    def router(self) -> APIRouter:
        r = APIRouter(include_in_schema=False)
        r.add_api_route("/console", self.overview, methods=["GET"])
        r.add_api_route("/console/login", self.login_form, methods=["GET"])
        r.add_api_route("/console/login", self.login, methods=["POST"])
        r.add_api_route("/console/logout", self.logout, methods=["POST"])
        r.add_api_route("/console/requests", self.requests, methods=["GET"])
        r.add_api_route("/console/requests/{request_id}", self.request_detail, methods=["GET"])
        for page in self.pages:
            page.register(r)
        return r

    # -- session ---------------------------------------------------------------------------

    async def login_form(self, request: Request) -> Response:
        return self.render("login.html", error=None, active="")

    async def login(self, request: Request) -> Response:
        if not same_origin(request, self.svc.trusted_proxies):  # no sign-in forged elsewhere
            return self.render("login.html", status=403, error=CROSS_SITE, active="")
        try:
            form = await self.form(request)
        except PayloadTooLarge as exc:
            return self.render("login.html", status=exc.http_status, error=exc.message,
                               active="")
        key = (form.get("api_key") or [""])[0].strip()
        try:
            if not key:
                raise AuthenticationError("enter an API key")
            p = await self.svc.keys.resolve(key)
        except AuthenticationError as exc:
            return self.render("login.html", status=401, error=exc.message, active="")
        token = secrets.token_urlsafe(32)
        await self.svc.kv.set(
            session_key(token),
            orjson.dumps({"key_id": p.key_id, "tenant": p.tenant, "agent": p.agent,
                          "admin": p.admin}).decode(),
            ttl_s=SESSION_TTL_S,
        )
        resp = RedirectResponse("/console", status_code=303)
        resp.set_cookie(COOKIE, token, max_age=SESSION_TTL_S, httponly=True,
                        samesite="strict", path="/console",
                        secure=request.url.scheme == "https")
        return resp

    async def logout(self, request: Request) -> Response:
        if not same_origin(request, self.svc.trusted_proxies):
            return Response(CROSS_SITE, status_code=403)
        token = request.cookies.get(COOKIE)
        if token:
            await self.svc.kv.delete(session_key(token))
        resp = RedirectResponse("/console/login", status_code=303)
        resp.delete_cookie(COOKIE, path="/console")
        return resp

    # -- pages -----------------------------------------------------------------------------

    def _filter(self, request: Request, p: Principal, limit: int = 50) -> LogFilter:
        q = request.query_params
        hours = float_param(q, "hours", 0, MAX_HOURS)
        page = int_param(q, "page", 1, 1, MAX_PAGE)
        return LogFilter(
            tenant=q.get("tenant") or None if p.admin else p.tenant,
            model=q.get("model") or None,
            status=choice_param(q, "status", ("ok", "error")),
            since=time.time() - hours * 3600 if hours is not None else None,
            search=q.get("q") or None,
            limit=limit, offset=(page - 1) * limit,
        )

    async def overview(self, request: Request) -> Response:
        p = await self.principal(request)
        if p is None:
            return RedirectResponse("/console/login", status_code=303)
        await self.svc.request_log.flush()
        f = LogFilter(tenant=None if p.admin else p.tenant, since=time.time() - 24 * 3600)

        def load(c: Any) -> dict[str, Any]:
            return {
                "by_model": spend_summary(c, f, "model"),
                "by_tenant": spend_summary(c, f, "tenant"),
                "hourly": spend_by_hour(c, f),
                "recent": query_requests(c, LogFilter(tenant=f.tenant, limit=10)),
            }

        data = await self.svc.db.run(load)
        totals = {
            "requests": sum(r["requests"] for r in data["by_model"]),
            "tokens": sum(r["prompt_tokens"] + r["completion_tokens"] for r in data["by_model"]),
            "cost_usd": sum(r["cost_usd"] for r in data["by_model"]),
        }
        return self.render("overview.html", active="/console", principal=p, totals=totals,
                            chart=bar_chart(data["hourly"]), **data)

    async def requests(self, request: Request) -> Response:
        p = await self.principal(request)
        if p is None:
            return RedirectResponse("/console/login", status_code=303)
        await self.svc.request_log.flush()
        f = self._filter(request, p)
        rows = await self.svc.db.run(lambda c: query_requests(c, f))
        q = dict(request.query_params)
        page = f.offset // f.limit + 1
        next_url = ("/console/requests?" + urlencode({**q, "page": page + 1})
                    if len(rows) == f.limit else None)
        prev_url = ("/console/requests?" + urlencode({**q, "page": page - 1})
                    if page > 1 else None)
        models = [s.name for s in self.svc.models.specs()]
        return self.render("requests.html", active="/console/requests", principal=p,
                            rows=rows, q=q, models=models, next_url=next_url,
                            prev_url=prev_url)

    async def request_detail(self, request: Request, request_id: str) -> Response:
        p = await self.principal(request)
        if p is None:
            return RedirectResponse("/console/login", status_code=303)
        await self.svc.request_log.flush()
        row = await self.svc.db.run(lambda c: get_request(c, request_id))
        if row is None or (not p.admin and row["tenant"] != p.tenant):
            return self.render("not_found.html", status=404, active="", principal=p,
                                what=f"request {request_id}")
        decisions = orjson.loads(row["decisions"] or "[]")
        panels = [Markup(await panel.request_panel(request, p, row))
                  for panel in self.shell.request_panels]
        return self.render("request_detail.html", active="/console/requests", principal=p,
                            r=row, decisions=decisions, panels=panels)

