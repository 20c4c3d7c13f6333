"""The console shell every page builds on: session, CSRF, layout, charts.

Sign-in takes an API key once and keeps a random session token (stored hashed in the KV
port) in an HttpOnly, SameSite=Strict cookie; the key itself is never put in a cookie or
URL. Pages import this module; it imports no page, so capabilities can add pages freely.
"""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import time
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Protocol
from urllib.parse import parse_qs

import orjson
from fastapi import APIRouter
from jinja2 import Environment, PackageLoader, select_autoescape
from starlette.requests import Request
from starlette.responses import HTMLResponse, RedirectResponse, Response

from keel.gateway.context import Principal
from keel.gateway.http import read_body

if TYPE_CHECKING:
    from keel.gateway.services import Services

COOKIE = "keel_console"
SESSION_TTL_S = 12 * 3600


@dataclass(frozen=True)
class NavItem:
    path: str
    title: str


class ConsolePage(Protocol):
    """A page (or a few) of the console: its nav entry and its routes."""

    @property
    def nav(self) -> NavItem | None: ...

    def register(self, r: APIRouter) -> None: ...


class RequestPanel(Protocol):
    """A section a capability adds to the request detail page (HTML, escaped by the
    panel); ``row`` is the request log row the viewer may see."""

    async def request_panel(self, request: Request, principal: Principal,
                            row: dict[str, Any]) -> str: ...


def session_key(token: str) -> str:
    return "console:session:" + hashlib.sha256(token.encode()).hexdigest()


def csrf_token(request: Request, cookie: str = COOKIE) -> str:
    session = request.cookies.get(cookie, "no-session")
    return hashlib.sha256(b"keel-csrf:" + session.encode()).hexdigest()[:32]


@dataclass(frozen=True)
class AdminPost:
    principal: Principal
    form: dict[str, list[str]]

    def field(self, name: str) -> str:
        return (self.form.get(name) or [""])[0]


class ConsoleShell:
    def __init__(self, svc: Services) -> None:
        self.svc = svc
        self.env = _env()
        self.nav: list[NavItem] = []
        self.request_panels: list[RequestPanel] = []  # pages add theirs when built

    async def principal(self, request: Request) -> Principal | None:
        if not self.svc.settings.auth_required:
            return Principal(key_id="-", tenant="default", admin=True)
        token = request.cookies.get(COOKIE)
        if not token:
            return None
        raw = await self.svc.kv.get(session_key(token))
        if raw is None:
            return None
        key_id = str(orjson.loads(raw)["key_id"])
        # The session only names its key: the key's current row decides (a revoked key ends
        # every session made with it at once, admin keys included).
        current = await asyncio.to_thread(self.svc.keys.active, key_id)
        if current is None:
            await self.svc.kv.delete(session_key(token))
        return current

    async def admin_post(self, request: Request) -> AdminPost | Response:
        """A form posted by a signed-in admin with a valid CSRF token, or the response to
        send instead (to the sign-in page, or 403)."""
        p = await self.principal(request)
        if p is None:
            return RedirectResponse("/console/login", status_code=303)
        form = await self.form(request)
        token = (form.get("csrf") or [""])[0]
        if not p.admin or not hmac.compare_digest(token, csrf_token(request)):
            return Response("forbidden: admin session and a valid form token required",
                            status_code=403)
        return AdminPost(p, form)

    async def session_post(self, request: Request) -> AdminPost | Response:
        """A form posted by any signed-in key with a valid CSRF token (what the key may do
        is for the handler to check), or the response to send instead."""
        p = await self.principal(request)
        if p is None:
            return RedirectResponse("/console/login", status_code=303)
        form = await self.form(request)
        if not hmac.compare_digest((form.get("csrf") or [""])[0], csrf_token(request)):
            return Response("forbidden: a valid form token is required", status_code=403)
        return AdminPost(p, form)

    async def form(self, request: Request) -> dict[str, list[str]]:
        """A posted form, refused with 413 (server.max_body_bytes) before it is buffered."""
        raw = await read_body(request, self.svc.settings.server.max_body_bytes)
        return parse_qs(raw.decode(errors="replace"))

    def render(self, name: str, status: int = 200, **ctx: Any) -> HTMLResponse:
        html = self.env.get_template(name).render(nav=self.nav, **ctx)
        return HTMLResponse(html, status_code=status,
                            headers={"cache-control": "no-store",
                                     "x-frame-options": "DENY",
                                     "content-security-policy": "default-src 'self'; "
                                     "style-src 'self' 'unsafe-inline'"})


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


def bar_chart(
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
