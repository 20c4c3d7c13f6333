"""``keel models``: the model table."""

from __future__ import annotations

import json

import typer

from keel.cli.common import console, new_table, settings_from


def register(app: typer.Typer) -> None:
    @app.command("models")
    def models(ctx: typer.Context,
               as_json: bool = typer.Option(False, "--json", help="JSON, one list.")) -> None:
        """List the model table: routing and USD prices per 1M tokens."""
        settings = settings_from(ctx)
        if as_json:
            typer.echo(json.dumps([m.model_dump(mode="json", exclude={"api_key"})
                                   for m in settings.model_table()]))
            return
        table = new_table("name", "kind", "provider", "upstream", "context", "$/1M in", "$/1M out")
        for m in settings.model_table():
            table.add_row(m.name, m.kind, m.provider, m.upstream_model if m.provider != "local"
                          else (m.path or "default GGUF"), str(m.context),
                          f"{m.input_usd_per_1m:g}", f"{m.output_usd_per_1m:g}")
        console.print(table)
