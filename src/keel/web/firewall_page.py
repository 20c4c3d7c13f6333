"""Console page for the firewall: recent blocks, active bans (with unban), rule hit counts."""

from __future__ import annotations

import hashlib
import hmac
from typing import TYPE_CHECKING, Any

from fastapi import APIRouter
from starlette.requests import Request
from starlette.responses import RedirectResponse, Response

from keel.firewall.export import flag_hits, recent_blocks, rule_hits

if TYPE_CHECKING:
    from keel.web.console import ConsoleRoutes


def csrf_token(request: Request, cookie: str) -> str:
    session = request.cookies.get(cookie, "no-session")
    return hashlib.sha256(b"keel-csrf:" + session.encode()).hexdigest()[:32]


class FirewallPage:
    def __init__(self, console: ConsoleRoutes) -> None:
        self.console = console
        self.svc = console.svc

    def register(self, r: APIRouter) -> None:
        r.add_api_route("/console/firewall", self.page, methods=["GET"])
        r.add_api_route("/console/firewall/unban", self.unban, methods=["POST"])

    async def page(self, request: Request) -> Response:
        from keel.web.console import COOKIE

        p = await self.console.principal(request)
        if p is None:
            return RedirectResponse("/console/login", status_code=303)
        await self.svc.request_log.flush()
        blocks: list[dict[str, Any]] = await self.svc.db.run(lambda c: recent_blocks(c, 500))
        if not p.admin:
            blocks = [b for b in blocks if b["tenant"] == p.tenant]
        state = self.svc.firewall_state
        bans = await state.list_bans() if state is not None and p.admin else []
        watched = await state.list_watches() if state is not None and p.admin else []
        return self.console.render(
            "firewall.html", active="/console/firewall", principal=p, blocks=blocks[:50],
            hits=rule_hits(blocks), flags=flag_hits(blocks), bans=bans, watched=watched,
            enabled=state is not None,
            csrf=csrf_token(request, COOKIE), message=request.query_params.get("msg"),
        )

    async def unban(self, request: Request) -> Response:
        from keel.web.console import COOKIE

        p = await self.console.principal(request)
        if p is None:
            return RedirectResponse("/console/login", status_code=303)
        form = await self.console.form(request)
        token = (form.get("csrf") or [""])[0]
        client = (form.get("client") or [""])[0]
        if not p.admin or not hmac.compare_digest(token, csrf_token(request, COOKIE)):
            return Response("forbidden: admin session and a valid form token required",
                            status_code=403)
        state = self.svc.firewall_state
        done = state is not None and await state.unban(client)
        msg = f"unbanned {client}" if done else f"{client} was not banned"
        return RedirectResponse(f"/console/firewall?msg={msg}", status_code=303)
