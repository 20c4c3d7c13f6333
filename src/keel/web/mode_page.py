"""Console page for the degradation ladder: mode, alarm values, spend, flip timeline."""

from __future__ import annotations

import time
from typing import TYPE_CHECKING, Any

from fastapi import APIRouter
from starlette.requests import Request
from starlette.responses import RedirectResponse, Response

from keel.degrade import audit
from keel.metering.request_log import LogFilter, spend_by_hour
from keel.web.shell import ConsoleShell, NavItem, bar_chart

if TYPE_CHECKING:
    from keel.degrade.service import Degrader


def timeline(flips: list[audit.Flip], levels: list[str], hours: float = 24.0,
             width: int = 720, height: int = 120) -> dict[str, Any]:
    """Step-chart geometry of the global level over the last ``hours`` (inline SVG)."""
    now = time.time()
    start = now - hours * 3600
    rows = max(len(levels) - 1, 1)
    glob = sorted((f for f in flips if f.scope == "*"), key=lambda f: f.ts)
    before = [f for f in glob if f.ts < start]
    current = before[-1].to_level if before else (glob[0].from_level if glob else levels[0])
    points = []

    def xy(ts: float, name: str) -> tuple[float, float]:
        idx = levels.index(name) if name in levels else 0
        return (ts - start) / (now - start) * width, 10 + idx / rows * (height - 20)

    points.append(xy(start, current))
    for f in glob:
        if f.ts < start:
            continue
        points.append(xy(f.ts, current))
        current = f.to_level
        points.append(xy(f.ts, current))
    points.append(xy(now, current))
    return {"points": " ".join(f"{x:.1f},{y:.1f}" for x, y in points), "width": width,
            "height": height,
            "labels": [{"name": n, "y": 10 + i / rows * (height - 20)}
                       for i, n in enumerate(levels)]}


class ModePage:
    nav = NavItem("/console/mode", "Mode")

    def __init__(self, shell: ConsoleShell, degrader: Degrader) -> None:
        self.shell = shell
        self.svc = shell.svc
        self.degrader = degrader

    def register(self, r: APIRouter) -> None:
        r.add_api_route("/console/mode", self.page, methods=["GET"])

    async def page(self, request: Request) -> Response:
        p = await self.shell.principal(request)
        if p is None:
            return RedirectResponse("/console/login", status_code=303)
        dg = self.degrader
        await self.svc.request_log.flush()
        since = time.time() - 24 * 3600
        flips = await self.svc.db.run(lambda c: audit.recent(c, 500, since=since))
        hourly = await self.svc.db.run(lambda c: spend_by_hour(
            c, LogFilter(tenant=None if p.admin else p.tenant, since=since)))
        status = dg.status()
        return self.shell.render(
            "mode.html", active="/console/mode", principal=p, enabled=True, st=status,
            flips=flips[:50], chart=bar_chart(hourly),
            timeline=timeline(flips, status["levels"]))
