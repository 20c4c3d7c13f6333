"""Console page for the hive: tasks with their streams, sizes, age and expiry."""

from __future__ import annotations

import time
from typing import TYPE_CHECKING

from fastapi import APIRouter
from starlette.requests import Request
from starlette.responses import RedirectResponse, Response

from keel.web.shell import ConsoleShell, NavItem

if TYPE_CHECKING:
    from keel.hive.service import HiveService


class HivePage:
    nav = NavItem("/console/hive", "Hive")

    def __init__(self, shell: ConsoleShell, hive: HiveService) -> None:
        self.shell = shell
        self.hive = hive

    def register(self, r: APIRouter) -> None:
        r.add_api_route("/console/hive", self.page, methods=["GET"])

    async def page(self, request: Request) -> Response:
        p = await self.shell.principal(request)
        if p is None:
            return RedirectResponse("/console/login", status_code=303)
        tenant = None if p.admin else p.tenant
        tasks = await self.hive.store.tasks(tenant)
        report = await self.hive.report(tenant)
        return self.shell.render("hive.html", active="/console/hive", principal=p,
                                 tasks=tasks, report=report, now=time.time(),
                                 settings=self.hive.settings)
