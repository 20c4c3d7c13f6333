"""Console page for the tool gateway: the active Cedar policy and recent tool decisions."""

from __future__ import annotations

import time
from typing import TYPE_CHECKING

from fastapi import APIRouter
from starlette.requests import Request
from starlette.responses import RedirectResponse, Response

from keel.tools.decision_log import DecisionFilter, query_decisions
from keel.web.shell import ConsoleShell, NavItem

if TYPE_CHECKING:
    from keel.tools.gateway import ToolGateway


class ToolsPage:
    nav = NavItem("/console/tools", "Tools")

    def __init__(self, shell: ConsoleShell, gateway: ToolGateway) -> None:
        self.shell = shell
        self.svc = shell.svc
        self.gateway = gateway

    def register(self, r: APIRouter) -> None:
        r.add_api_route("/console/tools", self.page, methods=["GET"])

    async def page(self, request: Request) -> Response:
        p = await self.shell.principal(request)
        if p is None:
            return RedirectResponse("/console/login", status_code=303)
        gw = self.gateway
        q = request.query_params
        decision = q.get("decision") if q.get("decision") in ("allow", "deny", "approval") \
            else None
        await gw.log.flush()
        f = DecisionFilter(tenant=None if p.admin else p.tenant, decision=decision,
                           since=time.time() - 7 * 24 * 3600, limit=200)
        rows = await self.svc.db.run(lambda c: query_decisions(c, f))
        snap = gw.authorizer.snapshot
        counts = {k: sum(1 for r in rows if r["decision"] == k)
                  for k in ("allow", "deny", "approval")}
        return self.shell.render(
            "tools.html", active="/console/tools", principal=p, enabled=True,
            tools=[s for s, _ in gw.tools.values()],
            snapshot=snap, rows=rows, counts=counts, decision=decision,
            policy_text=snap.text if snap is not None and p.admin else "",
        )
