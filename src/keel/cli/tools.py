"""``keel tools``: list the gateway's tools and read the decision log."""

from __future__ import annotations

import json
import time
from typing import Any

import typer

from keel.cli.common import console, new_table, settings_from
from keel.cli.policy import with_gateway


def build() -> typer.Typer:
    app = typer.Typer(no_args_is_help=True)

    @app.command("list")
    def list_(ctx: typer.Context, as_json: bool = typer.Option(False, "--json")) -> None:
        """Connect to the configured tool servers and list their tools."""

        async def run(gw: Any) -> list[dict[str, Any]]:
            return [{"name": s.name, "server": s.server, "description": s.description,
                     "arguments": sorted(s.input_schema.get("properties") or {})}
                    for s, _ in gw.tools.values()]

        tools = with_gateway(settings_from(ctx), run)
        if as_json:
            typer.echo(json.dumps(tools))
            return
        table = new_table("tool", "server", "arguments", "description")
        for t in tools:
            table.add_row(t["name"], t["server"], ", ".join(t["arguments"]), t["description"])
        console.print(table)

    @app.command("decisions")
    def decisions(
        ctx: typer.Context,
        hours: float = typer.Option(24.0, "--hours"),
        decision: str | None = typer.Option(None, "--decision", help="allow, deny or approval"),
        limit: int = typer.Option(50, "--limit"),
    ) -> None:
        """Show recent tool authorization decisions."""
        from keel.app import open_database
        from keel.tools.decision_log import DecisionFilter, query_decisions

        f = DecisionFilter(since=time.time() - hours * 3600, decision=decision, limit=limit)
        rows = open_database(settings_from(ctx)).transaction(lambda c: query_decisions(c, f))
        table = new_table("time", "agent", "tool", "decision", "policies", "µs", "outcome",
                          "reason")
        for r in rows:
            table.add_row(time.strftime("%m-%d %H:%M:%S", time.localtime(r["ts"])), r["agent"],
                          r["action"], r["decision"], ", ".join(r["policy_ids"]),
                          f"{r['latency_us']:.0f}", r["outcome"] or "", r["reason"] or "")
        console.print(table)

    return app
