"""Read-only views of the books for finance, the CLI and the console."""

from __future__ import annotations

import time
from typing import Any, Literal

from sqlalchemy import Connection, func, select

from keel.wallets.ledger import available_account, held_account
from keel.wallets.tables import entries, lines, payments

Dimension = Literal["agent", "session", "payee"]
_COLUMNS = {"agent": payments.c.agent, "session": payments.c.session_id,
            "payee": payments.c.payee}


def spend_by(conn: Connection, dim: Dimension, *, tenant: str | None = None,
             since: float | None = None, limit: int = 50) -> list[dict[str, Any]]:
    """Settled spend (micro-USD) and payment counts grouped by agent, session or payee."""
    col = _COLUMNS[dim]
    q = (select(col.label("key"), func.count().label("payments"),
                func.sum(payments.c.amount).label("spent"))
         .where(payments.c.status == "settled").group_by(col)
         .order_by(func.sum(payments.c.amount).desc()).limit(limit))
    if tenant:
        q = q.where(payments.c.tenant == tenant)
    if since is not None:
        q = q.where(payments.c.closed_at >= since)
    return [{"key": r.key, "payments": int(r.payments), "spent": int(r.spent or 0)}
            for r in conn.execute(q)]


def outcomes(conn: Connection, *, tenant: str | None = None,
             since: float | None = None) -> dict[str, int]:
    q = select(payments.c.status, func.count()).group_by(payments.c.status)
    if tenant:
        q = q.where(payments.c.tenant == tenant)
    if since is not None:
        q = q.where(payments.c.created_at >= since)
    return {status: int(n) for status, n in conn.execute(q)}


def spend_per_day(conn: Connection, *, tenant: str | None = None,
                  days: int = 14) -> list[dict[str, Any]]:
    """Settled spend per UTC day for the last ``days`` days (empty days included)."""
    today = int(time.time() // 86_400)
    first = today - days + 1
    q = select(payments.c.closed_at, payments.c.amount).where(
        payments.c.status == "settled", payments.c.closed_at >= first * 86_400)
    if tenant:
        q = q.where(payments.c.tenant == tenant)
    totals = dict.fromkeys(range(first, today + 1), 0)
    for closed_at, amount in conn.execute(q):
        totals[int(closed_at // 86_400)] = totals.get(int(closed_at // 86_400), 0) + amount
    return [{"day": time.strftime("%m-%d", time.gmtime(d * 86_400)), "spent": v}
            for d, v in sorted(totals.items())]


def wallet_entries(conn: Connection, wallet_id: str, limit: int = 50) -> list[dict[str, Any]]:
    """The wallet's journal: each entry with its effect on available and held."""
    accts = [available_account(wallet_id), held_account(wallet_id)]
    q = (select(entries.c.id, entries.c.kind, entries.c.at, entries.c.payment_id,
                entries.c.memo, lines.c.account_id, lines.c.amount)
         .join(lines, lines.c.entry_id == entries.c.id)
         .where(lines.c.account_id.in_(accts))
         .order_by(entries.c.at.desc(), entries.c.id).limit(limit * 2))
    out: dict[str, dict[str, Any]] = {}
    for r in conn.execute(q):
        e = out.setdefault(r.id, {"id": r.id, "kind": r.kind, "at": r.at,
                                  "payment_id": r.payment_id, "memo": r.memo,
                                  "available": 0, "held": 0})
        e["available" if r.account_id == accts[0] else "held"] += int(r.amount)
    return list(out.values())[:limit]


def recent_payments(conn: Connection, *, tenant: str | None = None,
                    limit: int = 50) -> list[dict[str, Any]]:
    q = select(payments).order_by(payments.c.created_at.desc()).limit(limit)
    if tenant:
        q = q.where(payments.c.tenant == tenant)
    return [dict(r._mapping) for r in conn.execute(q)]
