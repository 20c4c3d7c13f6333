"""The console shell every page builds on: session, CSRF, layout, charts.

Sign-in takes an API key once and keeps a random session token (stored hashed in the KV
port) in an HttpOnly, SameSite=Strict cookie; the key itself is never put in a cookie or
URL. Pages import this module; it imports no page, so capabilities can add pages freely.

Every console form post is checked twice against cross-site forgery: its ``Origin`` (or,
without one, its ``Referer``) must name the host the request was sent to, and it must carry
the CSRF token of the page. With a session the token derives from the session cookie; with
none (``auth_required = false``) from a random secret kept in ``<data_dir>/console_csrf.key``
(0600), so no other site can compute it.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import hmac
import logging
import os
import secrets
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol
from urllib.parse import parse_qs, urlsplit

import orjson
from fastapi import APIRouter
from jinja2 import Environment, PackageLoader, select_autoescape
from starlette.requests import Request
from starlette.responses import HTMLResponse, RedirectResponse, Response

from keel.gateway.context import Principal
from keel.gateway.http import read_body
from keel.storage.private_files import FILE_MODE, private_dir, tighten

if TYPE_CHECKING:
    from keel.gateway.services import Services

log = logging.getLogger("keel.console")

COOKIE = "keel_console"
SESSION_TTL_S = 12 * 3600
CSRF_SECRET_FILE = "console_csrf.key"


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


_secrets: dict[Path, bytes] = {}
_secrets_lock = threading.Lock()


def csrf_secret(data_dir: Path) -> bytes:
    """The random secret behind the CSRF token of requests without a session, shared by
    every process on ``data_dir`` (``console_csrf.key``, 0600, made on first use). If the
    file cannot be made, a per-process secret is used: forms still work in this process
    and stay unforgeable."""
    path = Path(data_dir) / CSRF_SECRET_FILE
    with _secrets_lock:
        if path not in _secrets:
            try:
                _secrets[path] = _load_or_create(path)
            except OSError as exc:
                log.warning("console CSRF secret %s unusable (%s): using a per-process "
                            "secret; console forms of other workers will not match", path, exc)
                _secrets[path] = secrets.token_bytes(32)
        return _secrets[path]


def _load_or_create(path: Path) -> bytes:
    private_dir(path.parent)
    if not path.exists():
        # Written in full under a private temporary name, then linked into place: another
        # process sees either no file or the whole secret, and the first link wins.
        tmp = path.with_name(f".{path.name}.{os.getpid()}.{secrets.token_hex(4)}")
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, FILE_MODE)
        try:
            with os.fdopen(fd, "w") as fh:
                fh.write(secrets.token_hex(32) + "\n")
            with contextlib.suppress(FileExistsError):
                os.link(tmp, path)
        finally:
            tmp.unlink(missing_ok=True)
    tighten(path)
    raw = bytes.fromhex(path.read_text().strip())
    if len(raw) < 16:
        raise OSError(f"{path} holds no usable secret")
    return raw


def csrf_token(request: Request, no_session_secret: bytes, cookie: str = COOKIE) -> str:
    """The form token of this request's session; without a session, keyed by the data
    dir's random secret (never a constant another site could compute)."""
    session = request.cookies.get(cookie)
    if session:
        return hashlib.sha256(b"keel-csrf:" + session.encode()).hexdigest()[:32]
    return hmac.new(no_session_secret, b"keel-csrf:no-session",
                    hashlib.sha256).hexdigest()[:32]


def _host_port(netloc: str, scheme: str | None = None) -> str:
    """``host[:port]`` lower-cased, without the port ``scheme`` implies by default."""
    netloc = netloc.strip().lower()
    for s, port in (("http", ":80"), ("https", ":443")):
        if (scheme is None or scheme == s) and netloc.endswith(port):
            return netloc.removesuffix(port)
    return netloc


def same_origin(request: Request, trusted_proxies: frozenset[str] = frozenset()) -> bool:
    """False when the browser says the form came from another site: the ``Origin`` header
    (or, without one, the ``Referer``) names another host than the one the request was sent
    to (``Host``, or ``X-Forwarded-Host`` set by a trusted proxy). A post with neither
    header (curl, scripts) is left to the CSRF token; ``Origin: null`` (sandboxed or
    privacy-redirected pages) is refused."""
    host = request.headers.get("host")
    peer = request.client.host if request.client else None
    if peer is not None and peer in trusted_proxies:
        host = (request.headers.get("x-forwarded-host") or "").split(",")[0].strip() or host
    origin = request.headers.get("origin")
    source = origin if origin is not None else request.headers.get("referer")
    if source is None:
        return True
    if not host:
        return False
    try:
        parts = urlsplit(source.strip())
    except ValueError:
        return False
    if parts.scheme not in ("http", "https") or not parts.netloc:
        return False
    return _host_port(parts.netloc, parts.scheme) == _host_port(host)


CROSS_SITE = "forbidden: this form was posted from another site (Origin/Referer does not " \
             "match this host); open the console at its own address and submit it there"


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

    def csrf(self, request: Request) -> str:
        """The CSRF token for forms on this request's page."""
        return csrf_token(request, csrf_secret(self.svc.settings.data_dir))

    async def admin_post(self, request: Request) -> AdminPost | Response:
        """A form posted by a signed-in admin, from this site, with a valid CSRF token, or
        the response to send instead (to the sign-in page, or 403)."""
        if not same_origin(request, self.svc.trusted_proxies):
            return Response(CROSS_SITE, status_code=403)
        p = await self.principal(request)
        if p is None:
            return RedirectResponse("/console/login", status_code=303)
        form = await self.form(request)
        token = (form.get("csrf") or [""])[0]
        if not p.admin or not hmac.compare_digest(token, self.csrf(request)):
            return Response("forbidden: admin session and a valid form token required",
                            status_code=403)
        return AdminPost(p, form)

    async def session_post(self, request: Request) -> AdminPost | Response:
        """A form posted by any signed-in key with a valid CSRF token (what the key may do
        is for the handler to check), or the response to send instead."""
        if not same_origin(request, self.svc.trusted_proxies):
            return Response(CROSS_SITE, status_code=403)
        p = await self.principal(request)
        if p is None:
            return RedirectResponse("/console/login", status_code=303)
        form = await self.form(request)
        if not hmac.compare_digest((form.get("csrf") or [""])[0], self.csrf(request)):
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
