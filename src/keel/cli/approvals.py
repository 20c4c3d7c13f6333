"""``keel approvals list|show|approve|deny``: works on the database directly, and wakes the
waiting workflow through DBOS's client, so it works while the gateway runs (or not)."""

from __future__ import annotations

import asyncio
import getpass
import time
from typing import Any

import orjson
import typer

from keel.cli.common import console, fail, new_table, settings_from, styled
from keel.errors import KeelError


def _engine(ctx: typer.Context):  # type: ignore[no-untyped-def]
    from keel.app import open_database
    from keel.approvals.engine import ApprovalEngine
    from keel.approvals.handlers import HandlerRegistry
    from keel.approvals.service import ClientSender

    settings = settings_from(ctx)
    db = open_database(settings)
    return ApprovalEngine(settings, db, HandlerRegistry(), sender=ClientSender(settings))


def build() -> typer.Typer:
    app = typer.Typer(no_args_is_help=True)

    @app.command("list")
    def list_(
        ctx: typer.Context,
        status: str | None = typer.Option("pending", "--status", "-s",
                                          help="pending, approved, denied, timed_out, ... "
                                               "or 'all'"),
        limit: int = typer.Option(50, "--limit", min=1, max=1000),
        as_json: bool = typer.Option(False, "--json", help="JSON, one list."),
    ) -> None:
        """Approvals, newest first (pending ones by default)."""
        from keel.approvals.models import STATUSES
        from keel.approvals.store import ListFilter

        if status not in (*STATUSES, "all"):
            fail(f"--status must be one of {', '.join(STATUSES)} or all")
        eng = _engine(ctx)
        rows = asyncio.run(eng.list(ListFilter(status=None if status == "all" else status,
                                               limit=limit)))
        if as_json:
            typer.echo(orjson.dumps([a.public() for a in rows]).decode())
            eng.db.dispose()
            return
        t = new_table("id", "action", "amount", "risk", "status", "outcome", "requested by",
                  "expires in")
        now = time.time()
        for a in rows:
            left = a.expires_at - now
            t.add_row(a.id, a.action, "-" if a.amount is None else f"{a.amount:,.2f}",
                      a.risk_level, a.status, a.outcome or "",
                      a.requested_by, f"{left / 3600:.1f} h" if a.status == "pending" else "")
        console.print(t)
        eng.db.dispose()

    @app.command("show")
    def show(ctx: typer.Context, approval_id: str) -> None:
        """One approval with its audit trail."""
        from keel.approvals.store import audit_rows

        eng = _engine(ctx)
        try:
            a = asyncio.run(eng.get(approval_id))
        except KeelError as exc:
            fail(exc.message)
        console.print_json(orjson.dumps(a.public()).decode())
        t = new_table("time", "event", "accepted", "actor", "ip", "channel", "detail")
        for r in reversed(eng.db.transaction(lambda c: audit_rows(c, approval_id))):
            t.add_row(time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(r["at"])), r["event"],
                      "yes" if r["accepted"] else "NO", r["actor"] or "", r["ip"] or "",
                      r["channel"] or "", r["detail"] or "")
        console.print(t)
        eng.db.dispose()

    def _decide(ctx: typer.Context, approval_id: str, decision: str, note: str | None,
                **task: Any) -> None:
        from keel.approvals.engine import Decider

        eng = _engine(ctx)
        who = Decider(actor=f"cli:{getpass.getuser()}", via="cli", ip="local")
        try:
            a = asyncio.run(eng.decide(decision, who, approval_id=approval_id, note=note,
                                       **task))
        except KeelError as exc:
            fail(exc.message)
        finally:
            eng.db.dispose()
        console.print(styled(f"{a.id}: ", (a.status, "bold"),
                             f" ({a.action}); the workflow resumes now"))

    @app.command("approve")
    def approve(ctx: typer.Context, approval_id: str,
                note: str | None = typer.Option(None, "--note"),
                output: str | None = typer.Option(
                    None, "--output", help="JSON result for a waiting workflow task.")) -> None:
        """Approve: the action runs once, in the process that waits for it."""
        value = None
        if output is not None:
            try:
                value = orjson.loads(output)
            except orjson.JSONDecodeError as exc:
                fail(f"--output is not valid JSON: {exc}")
        _decide(ctx, approval_id, "approve", note, output=value)

    @app.command("deny")
    def deny(ctx: typer.Context, approval_id: str,
             note: str | None = typer.Option(None, "--note"),
             error: str | None = typer.Option(
                 None, "--error", help="Error name a waiting workflow task fails with."),
             cause: str | None = typer.Option(None, "--cause", help="Its cause (default: "
                                              "the note).")) -> None:
        """Deny: the denial branch runs."""
        _decide(ctx, approval_id, "deny", note, error=error, cause=cause)

    return app
