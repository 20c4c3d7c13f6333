"""Console page for the firewall: recent blocks, active bans (with unban), rule hit counts."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from fastapi import APIRouter
from starlette.requests import Request
from starlette.responses import RedirectResponse, Response

from keel.firewall.export import flag_hits, recent_blocks, rule_hits
from keel.web.shell import ConsoleShell, NavItem

if TYPE_CHECKING:
    from keel.firewall.state import FirewallState


class FirewallPage:
    nav = NavItem("/console/firewall", "Firewall")

    def __init__(self, shell: ConsoleShell, state: FirewallState) -> None:
        self.shell = shell
        self.svc = shell.svc
        self.state = state

    def register(self, r: APIRouter) -> None:
        r.add_api_route("/console/firewall", self.page, methods=["GET"])
        r.add_api_route("/console/firewall/unban", self.unban, methods=["POST"])

    async def page(self, request: Request) -> Response:
        p = await self.shell.principal(request)
        if p is None:
            return RedirectResponse("/console/login", status_code=303)
        await self.svc.request_log.flush()
        blocks: list[dict[str, Any]] = await self.svc.db.run(lambda c: recent_blocks(c, 500))
        if not p.admin:
            blocks = [b for b in blocks if b["tenant"] == p.tenant]
        bans = await self.state.list_bans() if p.admin else []
        watched = await self.state.list_watches() if p.admin else []
        return self.shell.render(
            "firewall.html", active="/console/firewall", principal=p, blocks=blocks[:50],
            hits=rule_hits(blocks), flags=flag_hits(blocks), bans=bans, watched=watched,
            enabled=True,
            csrf=self.shell.csrf(request), message=request.query_params.get("msg"),
        )

    async def unban(self, request: Request) -> Response:
        post = await self.shell.admin_post(request)
        if isinstance(post, Response):
            return post
        client = post.field("client")
        done = await self.state.unban(client)
        msg = f"unbanned {client}" if done else f"{client} was not banned"
        return RedirectResponse(f"/console/firewall?msg={msg}", status_code=303)
