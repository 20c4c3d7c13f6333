"""``keel remediation``: incidents and their audited steps, read from keel's database
(works offline, with or without a running gateway)."""

from __future__ import annotations

import json
import time
from typing import Any

import typer

from keel.cli.common import console, fail, new_table, settings_from


def _load(ctx: typer.Context, fn: Any) -> Any:
    from keel.app import open_database

    settings = settings_from(ctx)
    db = open_database(settings)
    try:
        return db.transaction(fn)
    finally:
        db.dispose()


def build() -> typer.Typer:
    app = typer.Typer(help="Remediation incidents: list and show (steps, cost, timeline).",
                      no_args_is_help=True)

    @app.command("list")
    def list_(ctx: typer.Context, service: str = typer.Option(None, "--service"),
              limit: int = typer.Option(20, "--limit"),
              as_json: bool = typer.Option(False, "--json")) -> None:
        """Recent incidents, newest first."""
        from keel.remediation import store

        rows = _load(ctx, lambda c: store.recent(c, service, limit))
        if as_json:
            console.print_json(json.dumps([i.public() for i in rows], default=str))
            return
        t = new_table("id", "service", "status", "trigger", "opened", "result", "cost USD")
        for i in rows:
            out = i.outcome or {}
            t.add_row(i.id, i.service, i.status, i.trigger,
                      time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(i.opened_at)),
                      str(out.get("result", "-")), f"{out.get('total_usd', 0):.6f}")
        console.print(t)

    @app.command("show")
    def show(ctx: typer.Context, incident_id: str,
             as_json: bool = typer.Option(False, "--json")) -> None:
        """One incident: outcome, timeline and every step."""
        from keel.remediation import store

        got = _load(ctx, lambda c: (store.get(c, incident_id),
                                    store.list_steps(c, incident_id)))
        inc, steps = got
        if inc is None:
            fail(f"no incident {incident_id!r}; see `keel remediation list`")
        if as_json:
            console.print_json(json.dumps({**inc.public(), "steps": steps}, default=str))
            return
        console.print(f"{inc.id} {inc.service}: {inc.status} ({inc.trigger})", markup=False)
        if inc.outcome:
            console.print(json.dumps(inc.outcome, default=str), markup=False)
        t = new_table("step", "status", "seconds", "cost USD", "detail")
        for s in steps:
            out = s["output"]
            detail = out.get("error") or out.get("verdict") or ""
            t.add_row(s["step"], s["status"], f"{s['duration_s']:.3f}",
                      f"{s['cost_usd']:.6f}", str(detail)[:120])
        console.print(t)

    return app
