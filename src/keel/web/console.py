"""Console pages: overview with spend, the request log with filters, request detail.

The console is a shell: capabilities register extra pages with :meth:`ConsoleRoutes.nav`
entries and their own routers. Sign-in takes an API key once and keeps a random session
token (stored hashed in the KV port) in an HttpOnly, SameSite=Strict cookie; the key
itself is never put in a cookie or URL.
"""

from __future__ import annotations

import asyncio
import hashlib
import secrets
import time
from dataclasses import dataclass
from typing import Any
from urllib.parse import parse_qs, urlencode

import orjson
from fastapi import APIRouter
from jinja2 import Environment, PackageLoader, select_autoescape
from starlette.requests import Request
from starlette.responses import HTMLResponse, RedirectResponse, Response

from keel.errors import AuthenticationError, PayloadTooLarge
from keel.gateway.context import Principal
from keel.gateway.http import read_body
from keel.gateway.params import MAX_HOURS, MAX_PAGE, choice_param, float_param, int_param
from keel.gateway.services import Services
from keel.metering.request_log import (
    LogFilter,
    get_request,
    query_requests,
    spend_by_hour,
    spend_summary,
)

COOKIE = "keel_console"
SESSION_TTL_S = 12 * 3600


@dataclass(frozen=True)
class NavItem:
    path: str
    title: str


def _env() -> Environment:
    env = Environment(loader=PackageLoader("keel", "web/templates"),
                      autoescape=select_autoescape(["html"]))
    env.filters["ts"] = lambda t: time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(t or 0))
    env.filters["usd"] = lambda v: f"${(v or 0):,.6f}"
    env.filters["pretty"] = _pretty
    return env


def _pretty(raw: str | None) -> str:
    if not raw:
        return ""
    try:
        return orjson.dumps(orjson.loads(raw), option=orjson.OPT_INDENT_2).decode()
    except orjson.JSONDecodeError:
        return raw


class ConsoleRoutes:
    def __init__(self, svc: Services) -> None:
        self.svc = svc
        self.env = _env()
        self.nav = [NavItem("/console", "Overview"), NavItem("/console/requests", "Requests"),
                    NavItem("/console/firewall", "Firewall"),
                    NavItem("/console/cache", "Cache"),  # issue 4
                    NavItem("/console/tools", "Tools"),  # issue 6
                    NavItem("/console/approvals", "Approvals"),  # issue 7
                    NavItem("/console/workflows", "Workflows"),
                    NavItem("/console/wallets", "Wallets"),  # issue 8
                    NavItem("/console/mode", "Mode")]  # issue 5

    def router(self) -> APIRouter:
        r = APIRouter(include_in_schema=False)
        r.add_api_route("/console", self.overview, methods=["GET"])
        r.add_api_route("/console/login", self.login_form, methods=["GET"])
        r.add_api_route("/console/login", self.login, methods=["POST"])
        r.add_api_route("/console/logout", self.logout, methods=["POST"])
        r.add_api_route("/console/requests", self.requests, methods=["GET"])
        r.add_api_route("/console/requests/{request_id}", self.request_detail, methods=["GET"])
        from keel.web.firewall_page import FirewallPage

        FirewallPage(self).register(r)
        from keel.web.cache_page import CachePage  # issue 4

        CachePage(self).register(r)
        from keel.web.tools_page import ToolsPage  # issue 6

        ToolsPage(self).register(r)
        from keel.web.approvals_page import ApprovalsPage  # issue 7

        ApprovalsPage(self).register(r)
        from keel.web.workflows_page import WorkflowsPage

        WorkflowsPage(self).register(r)
        from keel.web.wallets_page import WalletsPage  # issue 8

        WalletsPage(self).register(r)
        from keel.web.mode_page import ModePage  # issue 5

        ModePage(self).register(r)
        return r

    # -- session ---------------------------------------------------------------------------

    async def principal(self, request: Request) -> Principal | None:
        if not self.svc.settings.auth_required:
            return Principal(key_id="-", tenant="default", admin=True)
        token = request.cookies.get(COOKIE)
        if not token:
            return None
        raw = await self.svc.kv.get(_session_key(token))
        if raw is None:
            return None
        key_id = str(orjson.loads(raw)["key_id"])
        # The session only names its key: the key's current row decides (a revoked key ends
        # every session made with it at once, admin keys included).
        current = await asyncio.to_thread(self.svc.keys.active, key_id)
        if current is None:
            await self.svc.kv.delete(_session_key(token))
        return current

    def render(self, name: str, status: int = 200, **ctx: Any) -> HTMLResponse:
        html = self.env.get_template(name).render(nav=self.nav, **ctx)
        return HTMLResponse(html, status_code=status,
                            headers={"cache-control": "no-store",
                                     "x-frame-options": "DENY",
                                     "content-security-policy": "default-src 'self'; "
                                     "style-src 'self' 'unsafe-inline'"})

    async def login_form(self, request: Request) -> Response:
        return self.render("login.html", error=None, active="")

    async def form(self, request: Request) -> dict[str, list[str]]:
        """A posted form, refused with 413 (server.max_body_bytes) before it is buffered."""
        raw = await read_body(request, self.svc.settings.server.max_body_bytes)
        return parse_qs(raw.decode(errors="replace"))

    async def login(self, request: Request) -> Response:
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
            _session_key(token),
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
        token = request.cookies.get(COOKIE)
        if token:
            await self.svc.kv.delete(_session_key(token))
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
                            chart=_bar_chart(data["hourly"]), **data)

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
        return self.render("request_detail.html", active="/console/requests", principal=p,
                            r=row, decisions=decisions)


def _session_key(token: str) -> str:
    return "console:session:" + hashlib.sha256(token.encode()).hexdigest()


def _bar_chart(
    hourly: list[dict[str, Any]], hours: int = 24, width: int = 720, height: int = 160
) -> dict[str, Any]:
    """Geometry for an inline SVG bar chart of spend per hour over the last ``hours``
    (empty hours included, so the time axis is honest; no JavaScript needed)."""
    now_hour = int(time.time() // 3600) * 3600
    slots = [now_hour - 3600 * i for i in range(hours - 1, -1, -1)]
    by_hour = {int(float(h["hour"])): h for h in hourly}
    peak = max((float(h["cost_usd"]) for h in hourly), default=0.0)
    slot_w = width / hours
    bars = []
    for i, hour in enumerate(slots):
        h = by_hour.get(hour)
        cost = float(h["cost_usd"]) if h else 0.0
        bh = (cost / peak) * (height - 20) if peak else 0.0
        bars.append({"x": i * slot_w + 1, "y": height - bh, "w": max(slot_w - 2, 1), "h": bh,
                     "label": time.strftime("%H", time.localtime(hour)), "cost": cost,
                     "requests": int(h["requests"]) if h else 0})
    return {"bars": bars if peak else [], "width": width, "height": height, "max": peak}
