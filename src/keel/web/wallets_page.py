"""Console page for agent spend: x402 spend per agent, session and payee, per day (chart)."""

from __future__ import annotations

import time
from typing import TYPE_CHECKING, Any

from fastapi import APIRouter
from sqlalchemy import Connection
from starlette.requests import Request
from starlette.responses import RedirectResponse, Response

from keel.wallets import reports, sessions
from keel.wallets.money import fmt_usd
from keel.web.shell import ConsoleShell, NavItem

if TYPE_CHECKING:
    from keel.wallets.service import WalletService


class WalletsPage:
    nav = NavItem("/console/wallets", "Wallets")

    def __init__(self, shell: ConsoleShell, wallets: WalletService) -> None:
        self.shell = shell
        self.svc = shell.svc
        self.wallets = wallets

    def register(self, r: APIRouter) -> None:
        r.add_api_route("/console/wallets", self.page, methods=["GET"])

    async def page(self, request: Request) -> Response:
        p = await self.shell.principal(request)
        if p is None:
            return RedirectResponse("/console/login", status_code=303)
        tenant = None if p.admin else p.tenant
        since = time.time() - 30 * 86_400

        def load(c: Connection) -> dict[str, Any]:
            return {
                "by_agent": reports.spend_by(c, "agent", tenant=tenant, since=since),
                "by_session": reports.spend_by(c, "session", tenant=tenant, since=since),
                "by_payee": reports.spend_by(c, "payee", tenant=tenant, since=since),
                "daily": reports.spend_per_day(c, tenant=tenant),
                "outcomes": reports.outcomes(c, tenant=tenant, since=since),
                "recent": reports.recent_payments(c, tenant=tenant, limit=20),
                "sessions": sessions.recent(c, tenant, limit=20),
            }

        data = await self.svc.db.run(load)
        total = sum(r["spent"] for r in data["by_agent"])
        return self.shell.render(
            "wallets.html", active="/console/wallets", principal=p, total=fmt_usd(total),
            enabled=True, chart=_chart(data["daily"]), fmt=fmt_usd,
            **data)


def _chart(daily: list[dict[str, Any]], width: int = 720, height: int = 160) -> dict[str, Any]:
    peak = max((d["spent"] for d in daily), default=0)
    slot = width / max(len(daily), 1)
    bars = [{"x": i * slot + 1, "w": max(slot - 2, 1),
             "h": (d["spent"] / peak) * (height - 20) if peak else 0.0,
             "label": d["day"], "spent": fmt_usd(d["spent"])} for i, d in enumerate(daily)]
    for b in bars:
        b["y"] = height - b["h"]
    return {"bars": bars if peak else [], "width": width, "height": height}
