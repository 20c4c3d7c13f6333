"""Console page for workflows: registered state machines, recent executions (filter by
workflow and status), and one execution's history events."""

from __future__ import annotations

from typing import TYPE_CHECKING

from starlette.requests import Request
from starlette.responses import RedirectResponse, Response

from keel.errors import NotFound
from keel.web.shell import ConsoleShell, NavItem

if TYPE_CHECKING:
    from fastapi import APIRouter

    from keel.workflows.service import WorkflowService


class WorkflowsPage:
    nav = NavItem("/console/workflows", "Workflows")

    def __init__(self, shell: ConsoleShell, workflows: WorkflowService) -> None:
        self.shell = shell
        self.svc = shell.svc
        self.workflows = workflows

    def register(self, r: APIRouter) -> None:
        r.add_api_route("/console/workflows", self.page, methods=["GET"])

    async def page(self, request: Request) -> Response:
        from keel.workflows.store import STATUSES

        p = await self.shell.principal(request)
        if p is None:
            return RedirectResponse("/console/login", status_code=303)
        wf = self.workflows
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
        return self.shell.render(
            "workflows.html", active="/console/workflows", principal=p, enabled=True,
            definitions=await wf.definitions(), executions=rows, statuses=STATUSES,
            q=dict(q), selected=selected, events=events)
