"""Console page for reasoning runs: recent runs, and one run's samples, verdicts,
citations and judge calls."""

from __future__ import annotations

from typing import TYPE_CHECKING

from starlette.requests import Request
from starlette.responses import RedirectResponse, Response

from keel.web.shell import ConsoleShell, NavItem

if TYPE_CHECKING:
    from fastapi import APIRouter

    from keel.reasoning.service import ReasoningService


class ReasoningPage:
    nav = NavItem("/console/reasoning", "Reasoning")

    def __init__(self, shell: ConsoleShell, service: ReasoningService) -> None:
        self.shell = shell
        self.service = service

    def register(self, r: APIRouter) -> None:
        r.add_api_route("/console/reasoning", self.page, methods=["GET"])

    async def page(self, request: Request) -> Response:
        p = await self.shell.principal(request)
        if p is None:
            return RedirectResponse("/console/login", status_code=303)
        store = self.service.store
        tenant = None if p.admin else p.tenant
        runs = await store.recent(tenant, 100)
        selected, judges = None, []
        run_id = request.query_params.get("run")
        if run_id:
            run = await store.get(run_id)
            if run is not None and (p.admin or run.tenant == p.tenant):
                selected = run.public(with_samples=True)
                judges = [e for e in await store.events(run_id) if e["kind"] == "judge"]
        return self.shell.render(
            "reasoning.html", active="/console/reasoning", principal=p, enabled=True,
            runs=runs, selected=selected, judges=judges,
            reasoners=list(self.service.engine.reasoners.values()))
