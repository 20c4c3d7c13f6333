"""Console page for the cache: hit rate, guard rejections, savings per hour (chart)."""

from __future__ import annotations

import time
from typing import TYPE_CHECKING

from fastapi import APIRouter
from starlette.requests import Request
from starlette.responses import RedirectResponse, Response

from keel.cache.stats import by_hour, summary
from keel.web.shell import ConsoleShell, NavItem, bar_chart

if TYPE_CHECKING:
    from keel.cache.stage import CacheStage


class CachePage:
    nav = NavItem("/console/cache", "Cache")

    def __init__(self, shell: ConsoleShell, cache: CacheStage) -> None:
        self.shell = shell
        self.svc = shell.svc
        self.cache = cache

    def register(self, r: APIRouter) -> None:
        r.add_api_route("/console/cache", self.page, methods=["GET"])

    async def page(self, request: Request) -> Response:
        p = await self.shell.principal(request)
        if p is None:
            return RedirectResponse("/console/login", status_code=303)
        cache = self.cache
        tenant = None if p.admin else p.tenant
        since = time.time() - 24 * 3600
        await cache.stats.flush()
        totals, hours = await self.svc.db.run(
            lambda c: (summary(c, since, tenant), by_hour(c, since, tenant)))
        chart = bar_chart([{"hour": h["hour"], "cost_usd": h["usd_saved"],
                             "requests": h["hits"]} for h in hours])
        namespaces = sorted(self.svc.settings.cache.namespaces.items())
        return self.shell.render(
            "cache.html", active="/console/cache", principal=p, enabled=True,
            totals=totals, chart=chart, namespaces=namespaces, settings=self.svc.settings.cache,
        )
