"""Console page for remediation: routed services with their versions and weights, recent
incidents with every audited step (the decision itself is on the approvals page)."""

from __future__ import annotations

from typing import TYPE_CHECKING

from fastapi import APIRouter
from starlette.requests import Request
from starlette.responses import RedirectResponse, Response

from keel.remediation import store
from keel.web.shell import ConsoleShell, NavItem

if TYPE_CHECKING:
    from keel.remediation.remediator import Remediator


class RemediationPage:
    nav = NavItem("/console/remediation", "Remediation")

    def __init__(self, shell: ConsoleShell, remediator: Remediator) -> None:
        self.shell = shell
        self.rm = remediator

    def register(self, r: APIRouter) -> None:
        r.add_api_route("/console/remediation", self.page, methods=["GET"])

    async def page(self, request: Request) -> Response:
        p = await self.shell.principal(request)
        if p is None:
            return RedirectResponse("/console/login", status_code=303)
        if not p.admin:
            return self.shell.render("remediation.html", active="/console/remediation",
                                     principal=p, services=[], incidents=[],
                                     error="remediation is visible to admin keys only")
        w = self.rm.cfg.detection.window_s
        services = [r.public(w) for r in self.rm.router.routes.values()]
        incidents = await self.rm.db.run(lambda c: store.recent(c, limit=20))
        ids = [i.id for i in incidents]
        steps = await self.rm.db.run(lambda c: {iid: store.list_steps(c, iid) for iid in ids})
        return self.shell.render("remediation.html", active="/console/remediation",
                                 principal=p, services=services, incidents=incidents,
                                 steps=steps, window_s=w, error=None)
