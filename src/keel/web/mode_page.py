"""Console page for the degradation ladder: mode, alarm values, spend, flip timeline."""

from __future__ import annotations

import time
from typing import TYPE_CHECKING, Any
from urllib.parse import urlencode

import orjson
from fastapi import APIRouter
from starlette.requests import Request
from starlette.responses import RedirectResponse, Response

from keel.degrade import audit
from keel.errors import InvalidRequest, KeelError
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
        r.add_api_route("/console/mode/change", self.change, methods=["POST"])

    async def change(self, request: Request) -> Response:
        """Admin form posts: pin a mode, back to auto, set or reset the ladder (audited like
        the admin API, with the console session's key as actor)."""
        post = await self.shell.admin_post(request)
        if isinstance(post, Response):
            return post
        p, form = post.principal, post.form
        dg = self.degrader
        actor = f"console:{p.key_id}"
        op = (form.get("op") or [""])[0]
        try:
            if op == "mode":
                minutes = (form.get("minutes") or [""])[0].strip()
                duration = float(minutes) * 60 if minutes else None
                if duration is not None and not 0 < duration <= 30 * 86_400:
                    raise InvalidRequest("minutes must be between 0 and 43200")
                await dg.set_mode((form.get("mode") or [""])[0], duration, actor)
                msg = f"mode pinned to {dg.flags.level.name}"
            elif op == "auto":
                await dg.set_auto(actor)
                msg = f"automatic mode; now {dg.flags.level.name}"
            elif op == "ladder":
                try:
                    body = orjson.loads((form.get("ladder") or ["{}"])[0])
                except orjson.JSONDecodeError as exc:
                    raise InvalidRequest(f"the ladder is not valid JSON: {exc}") from None
                await dg.set_config(body, actor)
                msg = "ladder saved; every replica uses it within a second"
            elif op == "reset":
                await dg.reset_config(actor)
                msg = f"ladder reset to {dg.source}"
            else:
                raise InvalidRequest(f"unknown operation {op!r}")
            q = {"msg": msg}
        except ValueError:
            q = {"err": "minutes must be a number"}
        except KeelError as exc:
            q = {"err": exc.message}
        return RedirectResponse("/console/mode?" + urlencode(q), status_code=303)

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
        q = request.query_params
        return self.shell.render(
            "mode.html", active="/console/mode", principal=p, enabled=True, st=status,
            flips=flips[:50], chart=bar_chart(hourly),
            timeline=timeline(flips, status["levels"]),
            ladder_json=orjson.dumps(status["ladder"], option=orjson.OPT_INDENT_2).decode(),
            csrf=self.shell.csrf(request), message=q.get("msg"), error=q.get("err"))
