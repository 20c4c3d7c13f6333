"""Console page for approvals: pending ones (approve / deny), history with filters, audit."""

from __future__ import annotations

import time
from typing import TYPE_CHECKING
from urllib.parse import urlencode

from fastapi import APIRouter
from starlette.requests import Request
from starlette.responses import RedirectResponse, Response

from keel.errors import KeelError
from keel.web.shell import ConsoleShell, NavItem

if TYPE_CHECKING:
    from keel.approvals.service import ApprovalsService


class ApprovalsPage:
    nav = NavItem("/console/approvals", "Approvals")

    def __init__(self, shell: ConsoleShell, approvals: ApprovalsService) -> None:
        self.shell = shell
        self.svc = shell.svc
        self.approvals = approvals

    def register(self, r: APIRouter) -> None:
        r.add_api_route("/console/approvals", self.page, methods=["GET"])
        r.add_api_route("/console/approvals/decide", self.decide, methods=["POST"])

    async def page(self, request: Request) -> Response:
        from keel.approvals.models import STATUSES
        from keel.approvals.store import ListFilter, audit_rows

        p = await self.shell.principal(request)
        if p is None:
            return RedirectResponse("/console/login", status_code=303)
        eng = self.approvals.engine
        q = request.query_params
        tenant = None if p.admin else p.tenant
        pending = await eng.list(ListFilter(status="pending", tenant=tenant, limit=200))
        status = q.get("status") if q.get("status") in STATUSES else None
        history = await eng.list(ListFilter(status=status, tenant=tenant,
                                            action=q.get("action") or None, limit=100))
        history = [a for a in history if a.status != "pending" or status == "pending"]
        audit = await eng.db.run(lambda c: audit_rows(c, q.get("audit"), 100)) \
            if p.admin else []
        return self.shell.render(
            "approvals.html", active="/console/approvals", principal=p, enabled=True,
            pending=pending, history=history, audit=audit, statuses=STATUSES, q=dict(q),
            now=time.time(), csrf=self.shell.csrf(request),
            message=q.get("msg"), error=q.get("err"))

    async def decide(self, request: Request) -> Response:
        from keel.approvals.engine import Decider
        from keel.gateway.http import client_ip

        post = await self.shell.admin_post(request)
        if isinstance(post, Response):
            return post
        p = post.principal
        approval_id, decision = post.field("id"), post.field("decision")
        who = Decider(actor=f"console:{p.key_id}", via="console",
                      ip=client_ip(request, self.svc.trusted_proxies))
        try:
            a = await self.approvals.engine.decide(decision, who, approval_id=approval_id)
            q = {"msg": f"{a.id}: {a.status}"}
        except KeelError as exc:
            q = {"err": exc.message}
        return RedirectResponse("/console/approvals?" + urlencode(q), status_code=303)
