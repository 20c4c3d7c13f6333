"""Console page for workflows: registered state machines, recent executions (filter by
workflow and status), and one execution's history events."""

from __future__ import annotations

from typing import TYPE_CHECKING

from starlette.requests import Request
from starlette.responses import RedirectResponse, Response

from keel.errors import NotFound

if TYPE_CHECKING:
    from fastapi import APIRouter

    from keel.web.console import ConsoleRoutes


class WorkflowsPage:
    def __init__(self, console: ConsoleRoutes) -> None:
        self.console = console
        self.svc = console.svc

    def register(self, r: APIRouter) -> None:
        r.add_api_route("/console/workflows", self.page, methods=["GET"])

    async def page(self, request: Request) -> Response:
        from keel.workflows.store import STATUSES

        p = await self.console.principal(request)
        if p is None:
            return RedirectResponse("/console/login", status_code=303)
        wf = self.svc.approvals.workflows if self.svc.approvals is not None else None
        if wf is None:
            return self.console.render("workflows.html", active="/console/workflows",
                                       principal=p, enabled=False)
        q = request.query_params
        status = q.get("status") if q.get("status") in STATUSES else None
        rows = await wf.executions(p, workflow=q.get("workflow") or None, status=status,
                                   limit=200)
        selected, events = None, []
        if q.get("execution"):
            try:
                selected = await wf.describe(q["execution"], p)
                events = await wf.history(selected.id, p)
            except NotFound:
                selected = None
        return self.console.render(
            "workflows.html", active="/console/workflows", principal=p, enabled=True,
            definitions=await wf.definitions(), executions=rows, statuses=STATUSES,
            q=dict(q), selected=selected, events=events)
